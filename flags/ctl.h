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
	CTL_EXIT_NOT_SYNCED = 5,    /* --wait-synced: no sync-back, or it timed out */
	CTL_EXIT_DEAD_LETTERED = 6, /* --wait-synced: changes were dead-lettered, not in legacy */
	CTL_EXIT_DRIFT = 7,         /* migration verify: legacy and the service differ */
	CTL_EXIT_NOT_RETRIED = 8,   /* migration dead retry --syncback: an event is gone, its entry left */
};

#define CTL_TIMEOUT_MS 2000

struct ctl {
	const char *redis_url;
	const char *prefix;
	bool redis_given;  /* --redis was on the command line */
	bool prefix_given; /* --prefix was */
	const char *actor;
	const char *events; /* --events, or NULL for <prefix>:service:events */
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

/* ctl_verify.c */
int migration_verify(struct ctl *ctl, int argc, char **argv);

/* ctl_stream.c */
#define CTL_STREAM_ID_MAX 48 /* "ms-seq", two 20-digit numbers */

struct ctl_stream_consumer {
	char *name;
	long long pending;
	long long idle_ms;
};

/* How far a consumer group is behind on its stream. */
struct ctl_stream_lag {
	bool exists;       /* the stream does */
	bool grouped;      /* the group exists on it */
	long long pending; /* delivered, not acknowledged */
	long long unread;  /* not yet delivered (every entry while there is no group) */
	double oldest_s;   /* age of the oldest entry not acknowledged, 0 for none */
	char last_delivered[CTL_STREAM_ID_MAX];
	struct ctl_stream_consumer *consumers;
	size_t nconsumers;
};

/* Sync-back as seen from cutoverctl: the service's events stream and the
 * `syncback` group applying them to legacy. */
struct ctl_syncback {
	struct buf stream;      /* the events stream's key */
	struct buf dead_stream; /* <prefix>:syncback:dead */
	struct ctl_stream_lag lag;
	long long dead;                    /* dead-letter entries */
	char mark[CTL_STREAM_ID_MAX];      /* last event when read, "0-0" for none */
	char dead_mark[CTL_STREAM_ID_MAX]; /* last dead letter then */
};

struct redisReply *ctl_command(struct flag_store *st, int *rc, const char *fmt, ...);
long long ctl_reply_int(const struct redisReply *r);
const struct redisReply *ctl_entry_field(const struct redisReply *entry, const char *name);
int ctl_stream_exists(struct flag_store *st, const char *key, bool *exists);
int ctl_stream_lag_read(struct flag_store *st, const char *key, const char *group, struct ctl_stream_lag *out);
void ctl_stream_lag_free(struct ctl_stream_lag *l);
void ctl_syncback_keys(const struct ctl *ctl, struct flag_store *st, struct buf *stream, struct buf *dead);
int ctl_syncback_read(struct ctl *ctl, struct flag_store *st, bool mark, struct ctl_syncback *sb);
void ctl_syncback_free(struct ctl_syncback *sb);
void ctl_syncback_line(const struct ctl_syncback *sb, struct buf *out);
void ctl_syncback_json(const struct ctl_syncback *sb, struct buf *out);
void ctl_syncback_section(const struct ctl_syncback *sb, struct buf *out);
int ctl_syncback_wait(struct ctl *ctl, struct flag_store *st, const struct ctl_syncback *sb, double timeout_s);

/* ctl_watch.c */
int ctl_flag_watch(struct ctl *ctl, int argc, char **argv);

#endif
