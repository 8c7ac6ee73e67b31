/*
 * ctl_main.c - cutoverctl's entry point: global options, command groups,
 * per-verb help, and the mapping from store results to exit codes.
 */
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "flags/ctl.h"

#define CTL_DEFAULT_REDIS "redis://127.0.0.1:6379/0"
#define CTL_DEFAULT_PREFIX "cutover"

static void ctl_usage(FILE *out)
{
	fprintf(out,
		"usage: cutoverctl [--redis URL] [--prefix P] [--events KEY] [--json] [--actor NAME] GROUP VERB [ARGS]\n"
		"\n"
		"Groups:\n"
		"  flag     create, roll out, kill and inspect feature flags\n"
		"  cohort   manage named cohorts (sets of user ids) that flags refer to\n"
		"  migration  watch and steer lazy migration: status, enqueue, dead letters\n"
		"\n"
		"Global options:\n"
		"  --redis URL    redis://[[user]:password@]host[:port][/db] or unix:///path?db=N\n"
		"                 (default $CUTOVER_REDIS_URL, else %s)\n"
		"  --prefix P     key prefix (default $CUTOVER_PREFIX, else %s)\n"
		"  --events KEY   the users service's events stream, read by sync-back\n"
		"                 (default P:service:events)\n"
		"  --json         machine-readable output\n"
		"  --actor NAME   who to record in the audit stream (default: login name)\n"
		"  --version      print the version\n"
		"  -h, --help     print this help\n"
		"\n"
		"'cutoverctl GROUP' lists the verbs; 'cutoverctl GROUP VERB --help' explains one.\n"
		"Exit codes: 0 ok, 1 usage, 2 no such flag, 3 Redis unreachable, 4 invalid value,\n"
		"5 sync-back not confirmed (--wait-synced), 6 changes dead-lettered by sync-back,\n"
		"7 drift found (migration verify).\n",
		CTL_DEFAULT_REDIS, CTL_DEFAULT_PREFIX);
}

static void ctl_group_usage(FILE *out, const char *group, const struct ctl_verb *verbs)
{
	fprintf(out, "usage: cutoverctl %s VERB [ARGS]\n\nVerbs:\n", group);
	for (const struct ctl_verb *v = verbs; v->name; v++)
		fprintf(out, "  %s%s%s\n      %s\n", v->name, *v->args ? " " : "", v->args, v->summary);
}

static void ctl_verb_usage(FILE *out, const char *group, const struct ctl_verb *v)
{
	fprintf(out, "usage: cutoverctl %s %s%s%s\n\n%s\n", group, v->name, *v->args ? " " : "", v->args, v->summary);
	if (v->help)
		fprintf(out, "\n%s", v->help);
}

/* Opens the store on first use; on failure prints the URL and the reason
 * and returns NULL (the caller exits CTL_EXIT_UNREACHABLE). */
struct flag_store *ctl_store(struct ctl *ctl)
{
	if (ctl->store == NULL) {
		char err[512];
		ctl->store = flag_store_open(ctl->redis_url, ctl->prefix, CTL_TIMEOUT_MS, err, sizeof(err));
		if (ctl->store == NULL)
			fprintf(stderr, "cutoverctl: %s\n", err);
	}
	return ctl->store;
}

int ctl_exit_for(int store_status)
{
	switch (store_status) {
	case STORE_OK: return CTL_EXIT_OK;
	case STORE_NOT_FOUND: return CTL_EXIT_NO_FLAG;
	case STORE_UNREACHABLE: return CTL_EXIT_UNREACHABLE;
	default: return CTL_EXIT_INVALID;
	}
}

/* Prints err and returns the exit code for store_status. */
int ctl_fail(int store_status, const char *err)
{
	fprintf(stderr, "cutoverctl: %s\n", err);
	return ctl_exit_for(store_status);
}

int ctl_usage_error(const char *group, const struct ctl_verb *verb, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "cutoverctl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nusage: cutoverctl %s %s%s%s\n", group, verb->name, *verb->args ? " " : "", verb->args);
	return CTL_EXIT_USAGE;
}

/*
 * Parses a verb's options (argv[0] is the verb), calling on_option for
 * each; it returns 0 or an exit code. Returns the index of the first
 * operand, or -(exit code) on error.
 */
int ctl_parse_options(const char *group, const struct ctl_verb *verb, int argc, char **argv, const char *shortopts,
		      const struct option *longopts, int (*on_option)(int opt, const char *arg, void *state),
		      void *state)
{
	char opts[64];
	/* ':' first: a missing argument is reported as ':' rather than '?'. */
	snprintf(opts, sizeof(opts), ":%s", shortopts);
	optind = 0;
	opterr = 0;
	int opt;
	while ((opt = getopt_long(argc, argv, opts, longopts, NULL)) != -1) {
		if (opt == '?' || opt == ':')
			return -ctl_usage_error(group, verb, "%s option '%s'",
						opt == '?' ? "unknown" : "missing value for", argv[optind - 1]);
		int rc = on_option(opt, optarg, state);
		if (rc != 0)
			return -rc;
	}
	return optind;
}

/* The entry called name in a verb table (which must hold it). */
const struct ctl_verb *ctl_verb_named(const struct ctl_verb *verbs, const char *name)
{
	while (strcmp(verbs->name, name) != 0)
		verbs++;
	return verbs;
}

/*
 * For verbs without options: consumes a "--" (after which operands may
 * start with '-') and refuses anything else that looks like an option.
 * Shifts *argv so that (*argv)[1] is the first operand. Returns 0 or an
 * exit code.
 */
int ctl_operands(const char *group, const struct ctl_verb *verb, int *argc, char ***argv)
{
	static const struct option none[] = { { NULL, 0, NULL, 0 } };
	int first = ctl_parse_options(group, verb, *argc, *argv, "", none, NULL, NULL);
	if (first < 0)
		return -first;
	*argc -= first - 1;
	*argv += first - 1;
	return CTL_EXIT_OK;
}

static bool ctl_wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			return true;
	return false;
}

/* Runs the verb argv[0] of group. */
int ctl_dispatch(struct ctl *ctl, const char *group, const struct ctl_verb *verbs, int argc, char **argv)
{
	if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "help") == 0) {
		ctl_group_usage(argc < 1 ? stderr : stdout, group, verbs);
		return argc < 1 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
	}
	for (const struct ctl_verb *v = verbs; v->name; v++) {
		if (strcmp(v->name, argv[0]) != 0)
			continue;
		if (ctl_wants_help(argc, argv)) {
			ctl_verb_usage(stdout, group, v);
			return CTL_EXIT_OK;
		}
		return v->run(ctl, argc, argv);
	}
	fprintf(stderr, "cutoverctl: unknown verb '%s %s'\n", group, argv[0]);
	ctl_group_usage(stderr, group, verbs);
	return CTL_EXIT_USAGE;
}

static const char *ctl_default_actor(void)
{
	const char *name = getenv("LOGNAME");
	if (name && *name)
		return name;
	struct passwd *pw = getpwuid(geteuid());
	return pw ? pw->pw_name : "unknown";
}

static const char *env_or(const char *name, const char *fallback)
{
	const char *v = getenv(name);
	return v && *v ? v : fallback;
}

int main(int argc, char **argv)
{
	struct ctl ctl = {
		.redis_url = env_or("CUTOVER_REDIS_URL", CTL_DEFAULT_REDIS),
		.prefix = env_or("CUTOVER_PREFIX", CTL_DEFAULT_PREFIX),
	};
	enum { OPT_REDIS = 256, OPT_PREFIX, OPT_JSON, OPT_ACTOR, OPT_VERSION, OPT_EVENTS };
	static const struct option options[] = {
		{ "redis", required_argument, NULL, OPT_REDIS },  { "prefix", required_argument, NULL, OPT_PREFIX },
		{ "json", no_argument, NULL, OPT_JSON },          { "actor", required_argument, NULL, OPT_ACTOR },
		{ "version", no_argument, NULL, OPT_VERSION },    { "help", no_argument, NULL, 'h' },
		{ "events", required_argument, NULL, OPT_EVENTS }, { NULL, 0, NULL, 0 },
	};
	log_init("cutoverctl", LOG_LEVEL_WARN);
	opterr = 0;
	int opt;
	while ((opt = getopt_long(argc, argv, "+:h", options, NULL)) != -1) {
		switch (opt) {
		case OPT_REDIS: ctl.redis_url = optarg; ctl.redis_given = true; break;
		case OPT_PREFIX: ctl.prefix = optarg; ctl.prefix_given = true; break;
		case OPT_JSON: ctl.json = true; break;
		case OPT_ACTOR: ctl.actor = optarg; break;
		case OPT_EVENTS: ctl.events = optarg; break;
		case OPT_VERSION: printf("cutoverctl %s\n", PACKAGE_VERSION); return CTL_EXIT_OK;
		case 'h': ctl_usage(stdout); return CTL_EXIT_OK;
		default:
			fprintf(stderr, "cutoverctl: %s option '%s'\n", opt == ':' ? "missing value for" : "unknown",
				argv[optind - 1]);
			ctl_usage(stderr);
			return CTL_EXIT_USAGE;
		}
	}
	if (ctl.actor == NULL)
		ctl.actor = ctl_default_actor();
	if (*ctl.actor == '\0' || strlen(ctl.actor) > FLAG_OWNER_MAX || !utf8_valid(ctl.actor, strlen(ctl.actor))) {
		fprintf(stderr, "cutoverctl: --actor must be 1 to %d bytes of UTF-8\n", FLAG_OWNER_MAX);
		return CTL_EXIT_INVALID;
	}
	if (ctl.events && *ctl.events == '\0') {
		fprintf(stderr, "cutoverctl: --events must name a stream\n");
		return CTL_EXIT_INVALID;
	}
	struct redis_url url;
	char why[FLAG_ERR_MAX];
	if (redis_url_parse(ctl.redis_url, &url, why, sizeof(why)) < 0) {
		fprintf(stderr, "cutoverctl: invalid Redis URL '%s': %s\n", ctl.redis_url, why);
		return CTL_EXIT_INVALID;
	}
	redis_url_free(&url);
	if (optind >= argc) {
		ctl_usage(stderr);
		return CTL_EXIT_USAGE;
	}
	const char *group = argv[optind];
	int rc;
	if (strcmp(group, "flag") == 0) {
		rc = ctl_dispatch(&ctl, group, ctl_flag_verbs, argc - optind - 1, argv + optind + 1);
	} else if (strcmp(group, "cohort") == 0) {
		rc = ctl_dispatch(&ctl, group, ctl_cohort_verbs, argc - optind - 1, argv + optind + 1);
	} else if (strcmp(group, "migration") == 0) {
		rc = ctl_dispatch(&ctl, group, ctl_migration_verbs, argc - optind - 1, argv + optind + 1);
	} else {
		fprintf(stderr, "cutoverctl: unknown group '%s'\n", group);
		ctl_usage(stderr);
		rc = CTL_EXIT_USAGE;
	}
	flag_store_close(ctl.store);
	return rc;
}
