/*
 * ctl.h - internals of cutoverctl, the operator CLI: the shared context,
 * the verb tables of each command group, and the exit codes.
 */
#ifndef CUTOVER_CTL_H
#define CUTOVER_CTL_H

#include <getopt.h>

#include "flags/flags.h"

/* Exit codes, documented in cutoverctl(1). */
enum ctl_exit {
	CTL_EXIT_OK = 0,
	CTL_EXIT_USAGE = 1,
	CTL_EXIT_NO_FLAG = 2,
	CTL_EXIT_UNREACHABLE = 3,
	CTL_EXIT_INVALID = 4,
};

#define CTL_TIMEOUT_MS 2000

struct ctl {
	const char *redis_url;
	const char *prefix;
	const char *actor;
	bool json;
	struct flag_store *store; /* opened on first use */
};

struct ctl_verb {
	const char *name;
	const char *args;    /* usage after the verb */
	const char *summary; /* one line */
	const char *help;    /* options and details, or NULL */
	int (*run)(struct ctl *ctl, int argc, char **argv);
};

/* ctl_main.c */
struct flag_store *ctl_store(struct ctl *ctl);
int ctl_exit_for(int store_status);
int ctl_fail(int store_status, const char *err);
int ctl_usage_error(const char *group, const struct ctl_verb *verb, const char *fmt, ...) CUTOVER_PRINTF(3, 4);
int ctl_parse_options(const char *group, const struct ctl_verb *verb, int argc, char **argv, const char *shortopts,
		      const struct option *longopts, int (*on_option)(int opt, const char *arg, void *state), void *state);
const struct ctl_verb *ctl_verb_named(const struct ctl_verb *verbs, const char *name);
int ctl_operands(const char *group, const struct ctl_verb *verb, int *argc, char ***argv);
int ctl_dispatch(struct ctl *ctl, const char *group, const struct ctl_verb *verbs, int argc, char **argv);

/* ctl_flag.c */
extern const struct ctl_verb ctl_flag_verbs[];
int ctl_check_name(const char *what, const char *name);
int ctl_check_ids(char **ids, size_t n);
int ctl_print_change(struct ctl *ctl, const char *subject, const struct flag *before, const struct flag *after,
		     long long version);

/* ctl_cohort.c */
extern const struct ctl_verb ctl_cohort_verbs[];

/* ctl_migration.c */
extern const struct ctl_verb ctl_migration_verbs[];

/* ctl_watch.c */
int ctl_flag_watch(struct ctl *ctl, int argc, char **argv);

#endif
