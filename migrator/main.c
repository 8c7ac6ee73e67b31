/*
 * main.c - cutover-migrate: options, signals, and the worker, sync-back
 * or the backfill.
 *
 *   SIGTERM  finish the batch in hand (deliver, record, ack; for the
 *   SIGINT   backfill, the page in hand and its cursor) and exit 0;
 *            a second one exits at once, acking nothing more: what was
 *            not acked is delivered again later, harmlessly, and the
 *            backfill resumes at its last cursor
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "migrator/migrator.h"

#define BACKFILL_BATCH 1000
#define BACKFILL_RATE_MAX 1000000

/* The backfill's options: long ones only, all from OPT_RATE on. */
enum { OPT_RATE = 256, OPT_DIRECT, OPT_BATCH, OPT_RESTART };

static volatile sig_atomic_t stop_signal;

/* Async-signal-safe: sets the flag the worker polls, or ends the process
 * on the second signal. */
static void on_signal(int sig)
{
	static const char msg[] = "cutover-migrate: second signal, exiting at once\n";
	if (stop_signal) {
		ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
		(void)n;
		_exit(128 + sig);
	}
	stop_signal = sig;
}

static void install_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static void usage(FILE *out)
{
	fprintf(out, "usage: cutover-migrate run -c FILE [--check-config] [--log-level LEVEL]\n"
		     "       cutover-migrate syncback -c FILE [--check-config] [--log-level LEVEL]\n"
		     "       cutover-migrate backfill -c FILE [--rate N] [--direct] [--batch N] [--restart]\n"
		     "                                [--log-level LEVEL]\n"
		     "       cutover-migrate --version\n"
		     "\n"
		     "  run                   migrate the users the proxy puts on the migrate streams\n"
		     "  syncback              apply the service's change events to the legacy users\n"
		     "  backfill              walk legacy in _id order and enqueue every user not seen yet,\n"
		     "                        from where the last backfill stopped\n"
		     "  -c, --config FILE     the configuration (see conf/migrate.conf)\n"
		     "  -t, --check-config    check the file and exit: 0 if good, 1 with FILE:LINE: reason\n"
		     "  -l, --log-level L     error, warn, info or debug (overrides the file)\n"
		     "  -V, --version         print the version\n"
		     "  --rate N              backfill: at most N users a second (default: no limit)\n"
		     "  --direct              backfill: migrate the users as run does, instead of enqueuing them\n"
		     "  --batch N             backfill: documents a page, 1 to %d (default %d)\n"
		     "  --restart             backfill: forget where the last one stopped, start from the beginning\n",
		MIGRATE_BATCH_MAX, BACKFILL_BATCH);
}

/* A --rate or --batch value, 1 to max, into *out. Returns 0, or -1 after
 * saying why. */
static int option_number(const char *name, const char *text, long max, int *out)
{
	if (parse_decimal(text, strlen(text), 1, max, out) == 0)
		return 0;
	fprintf(stderr, "cutover-migrate: %s must be a number from 1 to %ld, not '%s'\n", name, max, text);
	return -1;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },    { "check-config", no_argument, NULL, 't' },
		{ "log-level", required_argument, NULL, 'l' }, { "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },            { "rate", required_argument, NULL, OPT_RATE },
		{ "direct", no_argument, NULL, OPT_DIRECT },   { "batch", required_argument, NULL, OPT_BATCH },
		{ "restart", no_argument, NULL, OPT_RESTART }, { NULL, 0, NULL, 0 },
	};
	const char *path = NULL, *level_text = NULL;
	struct backfill_options backfill = { .batch = BACKFILL_BATCH };
	bool check = false, backfill_option = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "c:tl:Vh", options, NULL)) != -1) {
		backfill_option = backfill_option || opt >= OPT_RATE;
		switch (opt) {
		case 'c': path = optarg; break;
		case 't': check = true; break;
		case 'l': level_text = optarg; break;
		case 'V': printf("cutover-migrate %s\n", PACKAGE_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		case OPT_RATE:
			if (option_number("--rate", optarg, BACKFILL_RATE_MAX, &backfill.rate) < 0)
				return 1;
			break;
		case OPT_DIRECT: backfill.direct = true; break;
		case OPT_BATCH:
			if (option_number("--batch", optarg, MIGRATE_BATCH_MAX, &backfill.batch) < 0)
				return 1;
			break;
		case OPT_RESTART: backfill.restart = true; break;
		default: usage(stderr); return 1;
		}
	}
	const char *command = optind == argc - 1 ? argv[optind] : "";
	bool is_backfill = strcmp(command, "backfill") == 0, is_syncback = strcmp(command, "syncback") == 0;
	if (path == NULL || (!is_backfill && !is_syncback && strcmp(command, "run") != 0)) {
		usage(stderr);
		return 1;
	}
	if (backfill_option && !is_backfill) {
		fprintf(stderr, "cutover-migrate: --rate, --direct, --batch and --restart are options of backfill\n");
		return 1;
	}
	enum log_level level = LOG_LEVEL_INFO;
	if (level_text && log_level_parse(level_text, &level) < 0) {
		fprintf(stderr, "cutover-migrate: unknown log level '%s'\n", level_text);
		return 1;
	}
	mongoc_init();
	mongo_log_to_ours();
	struct migrate_config *cfg;
	char err[MIGRATE_ERR_MAX];
	int rc = 1;
	if (migrate_config_load(path, &cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "cutover-migrate: %s\n", err);
		goto out;
	}
	if (check) {
		printf("cutover-migrate: configuration file %s is OK\n", path);
		rc = 0;
	} else {
		log_init("cutover-migrate", level_text ? level : cfg->log_level);
		install_signals();
		rc = is_backfill   ? backfill_run(cfg, &backfill, &stop_signal)
		     : is_syncback ? syncback_run(cfg, &stop_signal)
				   : worker_run(cfg, &stop_signal);
	}
	migrate_config_free(cfg);
out:
	mongoc_cleanup();
	return rc;
}
