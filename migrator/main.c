/*
 * main.c - cutover-migrate: options, signals, and the worker.
 *
 *   SIGTERM  finish the batch in hand (deliver, record, ack) and exit 0;
 *   SIGINT   a second one exits at once, acking nothing more: what was
 *            not acked is delivered again later, harmlessly
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "migrator/migrator.h"

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
		     "       cutover-migrate --version\n"
		     "\n"
		     "  run                   migrate the users the proxy puts on the migrate streams\n"
		     "  -c, --config FILE     the configuration (see conf/migrate.conf)\n"
		     "  -t, --check-config    check the file and exit: 0 if good, 1 with FILE:LINE: reason\n"
		     "  -l, --log-level L     error, warn, info or debug (overrides the file)\n"
		     "  -V, --version         print the version\n");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },   { "check-config", no_argument, NULL, 't' },
		{ "log-level", required_argument, NULL, 'l' }, { "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },           { NULL, 0, NULL, 0 },
	};
	const char *path = NULL, *level_text = NULL;
	bool check = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "c:tl:Vh", options, NULL)) != -1) {
		switch (opt) {
		case 'c': path = optarg; break;
		case 't': check = true; break;
		case 'l': level_text = optarg; break;
		case 'V': printf("cutover-migrate %s\n", PACKAGE_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (path == NULL || optind != argc - 1 || strcmp(argv[optind], "run") != 0) {
		usage(stderr);
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
		rc = worker_run(cfg, &stop_signal);
	}
	migrate_config_free(cfg);
out:
	mongoc_cleanup();
	return rc;
}
