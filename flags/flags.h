/*
 * flags.h - libcutoverflags: the flag model, its JSON codec, sticky
 * bucketing, evaluation, immutable snapshots, the Redis store and the
 * watcher that keeps a snapshot current. Prototypes are grouped by the
 * file that defines them.
 */
#ifndef CUTOVER_FLAGS_H
#define CUTOVER_FLAGS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Limits, checked by the codec and by every setter. */
#define FLAG_NAME_MAX 64          /* bytes of [A-Za-z0-9._-] */
#define FLAG_USER_ID_MAX 256      /* bytes of UTF-8, no control characters */
#define FLAG_SALT_MAX 64          /* bytes of UTF-8 */
#define FLAG_DESCRIPTION_MAX 1024 /* bytes of UTF-8 */
#define FLAG_OWNER_MAX 128        /* bytes of UTF-8 */
#define FLAG_LIST_MAX 10000       /* ids in allow, in deny */
#define FLAG_COHORTS_MAX 32       /* cohorts named by one flag */
#define FLAG_PERCENT_MAX 10000    /* basis points: 10000 is 100% */
#define FLAG_ERR_MAX 256

/* murmur3.c: MurmurHash3 x86_32, fed in pieces. */
struct murmur3 {
	uint32_t h;
	uint32_t tail;   /* up to 3 bytes not yet mixed */
	uint32_t ntail;
	uint32_t total;
};
void murmur3_init(struct murmur3 *m, uint32_t seed);
void murmur3_update(struct murmur3 *m, const void *data, size_t len);
uint32_t murmur3_final(const struct murmur3 *m);
uint32_t murmur3_32(const void *data, size_t len, uint32_t seed);

/* strset.c: an immutable set of strings, built once and probed often. */
struct strset;
struct strset *strset_new(char *const *items, size_t n);
void strset_free(struct strset *set);
uint32_t strset_hash(const char *s, size_t len);
uint64_t strset_hash64(const char *s, size_t len);
bool strset_contains(const struct strset *set, uint32_t hash, const char *s, size_t len);

/* flag.c: the model. */
struct flag_idlist {
	char **items;
	size_t n;
};

struct flag_index; /* evaluation state; see eval.c */

struct flag {
	char *name;
	bool enabled;
	bool kill;
	int percent; /* basis points, 0..FLAG_PERCENT_MAX */
	char *salt;
	struct flag_idlist allow;
	struct flag_idlist deny;
	struct flag_idlist cohorts; /* names of cohorts, members kept in Redis sets */
	char *description;
	char *owner;
	struct flag_index *index; /* built by flag_index_build, NULL before */
};

struct flag *flag_new(const char *name);
void flag_free(struct flag *f);
struct flag *flag_clone(const struct flag *f);
bool flag_equal(const struct flag *a, const struct flag *b);
int flag_name_check(const char *name, char *err, size_t errlen);
int flag_user_id_check(const char *id, size_t len, char *err, size_t errlen);
int flag_idlist_add(struct flag_idlist *l, const char *id);
bool flag_idlist_remove(struct flag_idlist *l, const char *id);
bool flag_idlist_has(const struct flag_idlist *l, const char *id);
void flag_idlist_free(struct flag_idlist *l);
int flag_percent_parse(const char *text, int *out, char *err, size_t errlen);
void flag_percent_format(int bp, char *out, size_t outlen);
void flag_diff(const struct flag *old, const struct flag *cur, struct buf *out);

/* codec.c: JSON, strict on the way in, canonical on the way out. */
struct flag *flag_decode(const char *json, size_t len, char *err, size_t errlen);
void flag_encode(const struct flag *f, struct buf *out);

/* eval.c */
enum flag_reason {
	FLAG_REASON_KILL,
	FLAG_REASON_OFF,
	FLAG_REASON_DENY,
	FLAG_REASON_ALLOW,
	FLAG_REASON_COHORT,
	FLAG_REASON_BUCKET,
};

struct flag_decision {
	bool on;
	enum flag_reason reason;
	int bucket;         /* 0..9999, always computed */
	const char *cohort; /* the matching cohort (borrowed), for FLAG_REASON_COHORT */
};

struct flag_snapshot;
int flag_bucket(const char *salt, size_t salt_len, const char *user, size_t user_len);
void flag_index_build(struct flag *f, const struct flag_snapshot *snap);
void flag_index_free(struct flag_index *ix);
void flag_eval(const struct flag *f, const char *user, size_t len, struct flag_decision *out);
const char *flag_reason_name(enum flag_reason reason);

/* snapshot.c: everything needed to evaluate, immutable once sealed and
 * shared between threads by reference counting. */
struct cohort {
	char *name;
	struct flag_idlist members;
	struct strset *set;
};

struct flag_snapshot {
	atomic_int refs;
	long long version;    /* the store's version counter when read */
	int64_t loaded_at_us; /* CLOCK_REALTIME */
	struct flag **flags;  /* sorted by name */
	size_t nflags;
	struct cohort *cohorts; /* sorted by name */
	size_t ncohorts;
};

struct flag_snapshot *flag_snapshot_new(long long version);
void flag_snapshot_add_flag(struct flag_snapshot *s, struct flag *f);
void flag_snapshot_add_cohort(struct flag_snapshot *s, const char *name, struct flag_idlist *members);
void flag_snapshot_seal(struct flag_snapshot *s);
struct flag_snapshot *flag_snapshot_ref(struct flag_snapshot *s);
void flag_snapshot_unref(struct flag_snapshot *s);
const struct flag *flag_snapshot_find(const struct flag_snapshot *s, const char *name);
const struct cohort *flag_snapshot_cohort(const struct flag_snapshot *s, const char *name);

/* The slot through which the watcher hands snapshots to readers (see
 * struct slot): the lock is never held across a Redis round trip. */
struct flag_snapshot_slot {
	struct slot slot;
};
void flag_slot_init(struct flag_snapshot_slot *slot);
void flag_slot_destroy(struct flag_snapshot_slot *slot);
void flag_slot_publish(struct flag_snapshot_slot *slot, struct flag_snapshot *snap);
struct flag_snapshot *flag_slot_acquire(struct flag_snapshot_slot *slot);
struct flag_snapshot *flag_slot_refresh(struct flag_snapshot_slot *slot, struct flag_snapshot *held,
					unsigned *seen_generation);

/* store.c: the Redis layout of docs/design.md. */
enum store_status {
	STORE_OK = 0,
	STORE_UNREACHABLE = -1, /* connect, timeout or I/O error */
	STORE_NOT_FOUND = -2,
	STORE_CONFLICT = -3,    /* someone else changed it first */
	STORE_INVALID = -4,     /* bad value, or bad data found in Redis */
	STORE_EXISTS = -5,
};

struct flag_store;
struct redisContext;
struct redisReply;
struct flag_store *flag_store_open(const char *url, const char *prefix, int timeout_ms, char *err,
				   size_t errlen);
void flag_store_close(struct flag_store *st);
const char *flag_store_describe(const struct flag_store *st);
struct redisContext *flag_store_redis(struct flag_store *st);
const char *flag_store_prefix(const struct flag_store *st);
int flag_store_reply_status(struct flag_store *st, const struct redisReply *r, char *err, size_t errlen);
int flag_store_load(struct flag_store *st, struct flag_snapshot **out, char *err, size_t errlen);
int flag_store_get(struct flag_store *st, const char *name, struct flag **out, char *err, size_t errlen);

/* A change to one flag: returns 0 and edits f, or a store_status with
 * the reason in err. */
typedef int (*flag_mutator)(struct flag *f, void *arg, char *err, size_t errlen);
int flag_store_create(struct flag_store *st, const struct flag *f, const char *actor,
		      long long *version, char *err, size_t errlen);
int flag_store_update(struct flag_store *st, const char *name, const char *action, flag_mutator fn,
		      void *arg, const char *actor, struct flag **result, long long *version, char *err,
		      size_t errlen);
int flag_store_delete(struct flag_store *st, const char *name, const char *actor, long long *version,
		      char *err, size_t errlen);
int flag_store_cohort_change(struct flag_store *st, const char *cohort, bool add, char *const *ids,
			     size_t n, const char *actor, long long *changed, char *err, size_t errlen);
int flag_store_cohort_members(struct flag_store *st, const char *cohort, struct flag_idlist *out,
			      char *err, size_t errlen);

struct audit_entry {
	int64_t time_ms;
	const char *subject;
	const char *actor;
	const char *action;
	const char *old_json; /* "" when created */
	const char *new_json; /* "" when deleted */
	long long version;
};
typedef void (*audit_visitor)(const struct audit_entry *e, void *arg);
int flag_store_history(struct flag_store *st, const char *subject, size_t limit, audit_visitor fn,
		       void *arg, char *err, size_t errlen);

/* store.c, shared with watcher.c: the one-round-trip snapshot read. */
extern const char flag_store_load_script[];
int flag_snapshot_from_reply(const struct redisReply *r, struct flag_snapshot **out, char *err,
			     size_t errlen);
void flag_store_key(const char *prefix, const char *suffix, struct buf *out);

/* watcher.c: keeps a slot current from Redis, on a libevent base. */
enum watcher_state { WATCHER_CONNECTING, WATCHER_LIVE, WATCHER_DISCONNECTED };
struct flag_watcher;
struct event_base;
/* Called on the watcher's thread after each new snapshot is published
 * (old may be NULL), and after each change of state. */
struct watcher_hooks {
	void (*on_snapshot)(const struct flag_snapshot *old, const struct flag_snapshot *cur, void *arg);
	void (*on_state)(enum watcher_state state, const char *detail, void *arg);
	void *arg;
};
struct flag_watcher *flag_watcher_new(struct event_base *base, const char *url, const char *prefix,
				      struct flag_snapshot_slot *slot, const struct watcher_hooks *hooks,
				      char *err, size_t errlen);
void flag_watcher_free(struct flag_watcher *w);
enum watcher_state flag_watcher_state(const struct flag_watcher *w);
const char *watcher_state_name(enum watcher_state state);

#endif
