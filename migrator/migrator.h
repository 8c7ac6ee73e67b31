/*
 * migrator.h - cutover-migrate: the lazy-migration worker. It consumes
 * the users that the proxy puts on the migrate streams, copies each
 * one's document from the legacy MongoDB into the user service (over
 * HTTP, or straight into the service's MongoDB) and records the result
 * in Redis. The backfill walks the legacy collection and enqueues (or
 * migrates) every user the proxy has not seen. The Redis layout and the
 * order of effects are in docs/design.md, "Lazy migration"; worker.c
 * says how failures are retried, backfill.c how a walk resumes.
 */
#ifndef CUTOVER_MIGRATOR_H
#define CUTOVER_MIGRATOR_H

#include <signal.h>

#include <mongoc/mongoc.h>

#include "common/common.h"

#define MIGRATE_ERR_MAX 512
#define USER_ID_MAX 256     /* bytes */
#define DELIVERY_ERROR_MAX 256
#define MIGRATE_BATCH_MAX 10000 /* users per batch, and per backfill page */
#define LOG_EXCERPT 64          /* bytes of a bad user id shown in a log line */
#define OID_HEX_LEN 24     /* an ObjectId's hex digits */

/* ---- mapping.c: from a legacy document to the service's ------------- */

struct rename_rule {
	char *from;
	char *to;
};

/*
 * Top-level fields only. keep and drop name legacy fields; keep empty
 * keeps every field that is not dropped, and _id is kept unless dropped,
 * as in a MongoDB projection. Renames apply to what is kept; defaults
 * name fields of the result and are set only where absent.
 */
struct mapping {
	char **keep;
	size_t nkeep;
	char **drop;
	size_t ndrop;
	struct rename_rule *renames;
	size_t nrenames;
	bson_t *defaults; /* field -> value, in the order given */
};

void mapping_init(struct mapping *m);
void mapping_free(struct mapping *m);
int mapping_field_check(const char *name, char *why, size_t whylen);
int mapping_add_keep(struct mapping *m, const char *field, char *why, size_t whylen);
int mapping_add_drop(struct mapping *m, const char *field, char *why, size_t whylen);
int mapping_add_rename(struct mapping *m, const char *rule, char *why, size_t whylen);
int mapping_add_default(struct mapping *m, const char *rule, char *why, size_t whylen);
int mapping_finish(const struct mapping *m, char *why, size_t whylen);
const char *mapping_output_name(const struct mapping *m, const char *field);
int mapping_apply(const struct mapping *m, const bson_t *in, bson_t *out, char *why, size_t whylen);

/* ---- config.c ------------------------------------------------------- */

enum sink_type { SINK_HTTP, SINK_MONGO };
enum legacy_id_type { LEGACY_ID_STRING, LEGACY_ID_OBJECTID };

struct mongo_target {
	char *uri;
	char *database;
	char *collection;
};

enum syncback_deletes { SYNCBACK_TOMBSTONE, SYNCBACK_DELETE };

/* The syncback { } section: the service's events, back into legacy. */
struct syncback_config {
	char *stream; /* the service's events; default <prefix>:service:events */
	enum syncback_deletes deletes;
	char *tombstone_field; /* set to true on a deleted user */
	char *state_field;     /* the per-field versions kept in each legacy user */
	int w;                 /* write concern: a count, or -1 for majority */
	int wtimeout_ms;
	char *metrics_file; /* or NULL */
	struct mapping mapping; /* service fields -> legacy fields */
};

struct migrate_config {
	char *path;
	char *redis_url;
	char *redis_prefix;
	struct mongo_target legacy;
	enum legacy_id_type id_type;
	enum sink_type sink;
	char *sink_url;              /* http: a template with {id} */
	struct mongo_target service; /* mongo */
	int sink_timeout_ms;
	char *version_field; /* or NULL */
	struct mapping mapping;
	int batch;
	int block_ms;
	char *consumer;
	int attempts;
	int backoff_ms;
	int backoff_max_ms;
	int claim_idle_ms;
	char *metrics_file; /* or NULL */
	enum log_level log_level;
	char *verify_url;       /* verify { url }: the service's read API, with {id}; or NULL */
	char **verify_ignore;   /* verify { ignore }: fields only one side has */
	size_t nverify_ignore;
	struct syncback_config syncback;
};

int migrate_config_load(const char *path, struct migrate_config **out, char *err, size_t errlen);
void migrate_config_free(struct migrate_config *cfg);
const char *sink_type_name(enum sink_type type);

/* ---- deliveries: one user of a batch on its way through ------------- */

enum outcome {
	OUTCOME_NONE,      /* not decided yet */
	OUTCOME_DELIVERED, /* in the service: record, then ack */
	OUTCOME_RETRY,     /* count an attempt, leave the entry pending */
	OUTCOME_DEAD,      /* to the dead-letter stream, then ack */
	OUTCOME_DEFERRED,  /* not tried (the sink is down): leave it pending */
};

struct delivery {
	char *user;
	bool as_oid;    /* looked up as an ObjectId (legacy.id_type) */
	bson_t *legacy; /* the legacy document; NULL if not found */
	bson_t *doc;    /* the legacy document after the mapping */
	enum outcome outcome;
	const char *reason; /* static: not-found, mapping, sink-4xx, attempts */
	char error[DELIVERY_ERROR_MAX];
	long long attempts; /* failed attempts so far, from Redis */
	bool counted;       /* batch.c: attempts read from Redis */
	bool recorded;      /* batch.c: Redis holds the outcome; ack */
};

void delivery_set(struct delivery *d, enum outcome outcome, const char *reason, const char *fmt, ...)
	CUTOVER_PRINTF(4, 5);
void delivery_free(struct delivery *d);
void delivery_again(struct delivery *d);

/* ---- sinks: sink_http.c, sink_mongo.c ---------------------------------
 * deliver() decides the outcome of each item still OUTCOME_NONE:
 * DELIVERED, RETRY, DEAD (reason sink-4xx or mapping) or DEFERRED, with
 * the error text. */

struct sink {
	void (*deliver)(struct sink *s, struct delivery *const *items, size_t n);
	void (*free)(struct sink *s);
};

int sink_http_check_url(const char *url, char *why, size_t whylen);
struct sink *sink_http_new(const struct migrate_config *cfg, char *err, size_t errlen);

/* sink_http.c's client, which verify.c shares: one request at a time to
 * a URL template with {id}, over a kept-alive connection. */
enum http_method { HTTP_GET, HTTP_PUT };

#define HTTP_EXCERPT 200

struct http_reply {
	int status;                     /* 0: no response, see error */
	char error[DELIVERY_ERROR_MAX]; /* status 0: what went wrong */
	char excerpt[HTTP_EXCERPT + 1]; /* the body's start, printable */
};

struct http_client;
struct http_client *http_client_new(const char *url, int timeout_ms, char *err, size_t errlen);
void http_client_free(struct http_client *c);
void http_client_request(struct http_client *c, enum http_method method, const char *id, const char *body,
			 size_t len, const char *const *headers, struct buf *response, struct http_reply *out);
struct sink *sink_mongo_new(const struct migrate_config *cfg, char *err, size_t errlen);
/* sink_mongo.c's reading of a failed bulk write's reply, shared */
int mongo_each_write_error(const bson_t *reply, void (*fn)(const bson_t *write_error, void *arg), void *arg);
int64_t mongo_write_error_index(const bson_t *write_error);
bool mongo_duplicate_on_id(const bson_t *write_error);
void mongo_write_error_text(const bson_t *write_error, char *out, size_t outlen);
bool mongo_write_concern_failed(const bson_t *reply);

/* ---- legacy.c: the legacy collection, and MongoDB helpers ---------- */

struct legacy;
int mongo_uri_check(const char *uri, char *why, size_t whylen);
mongoc_client_pool_t *mongo_pool_new(const char *uri, int socket_ms, char *err, size_t errlen);
void mongo_log_to_ours(void);
struct legacy *legacy_open(const struct migrate_config *cfg, char *err, size_t errlen);
struct legacy *legacy_open_target(const struct mongo_target *t, enum legacy_id_type id_type, bson_t *projection,
				  int socket_ms, char *err, size_t errlen);
mongoc_client_pool_t *legacy_pool(const struct legacy *l);
void legacy_close(struct legacy *l);
int legacy_load(struct legacy *l, struct delivery *const *items, size_t n, char *err, size_t errlen);
bool legacy_append_id(bson_t *doc, const char *key, const char *user, size_t len, enum legacy_id_type id_type);
int legacy_user_id(const bson_t *doc, char id[USER_ID_MAX + 1], const char **why);
int legacy_walk(struct legacy *l, const bson_t *after, int limit, bool whole, bson_t **docs, size_t *n, char *err,
		size_t errlen);
int legacy_count(struct legacy *l, const bson_t *after, int64_t *total, int64_t *done, char *err, size_t errlen);

/* ---- metrics.c: counters, rewritten to metrics_file every second ---- */

enum counter {
	COUNT_PROCESSED, /* stream entries taken in hand */
	COUNT_MIGRATED,  /* users delivered and recorded */
	COUNT_FAILED,    /* retryable delivery failures */
	COUNT_DEFERRED,  /* users not tried: the sink was down */
	COUNT_RETRIED,   /* entries taken in again by XAUTOCLAIM */
	COUNT_DEAD,      /* users dead-lettered, all reasons */
	COUNT_NOT_FOUND,
	COUNT_MALFORMED,
	COUNT_MAPPING,
	COUNT_SINK_4XX,
	COUNT_ATTEMPTS,      /* dead-lettered after the last attempt */
	COUNT_LEGACY_ERRORS, /* batches the legacy find failed for */
	COUNT_REDIS_ERRORS,  /* lost connections and refused commands */
	/* sync-back's own */
	COUNT_SB_APPLIED,       /* users' changes in legacy (written, or already there) */
	COUNT_SB_CREATED,       /* users created through the service, recorded as migrated */
	COUNT_SB_DELETED,       /* users deleted or tombstoned */
	COUNT_SB_NOT_IN_LEGACY, /* changes to a user legacy lacks, left for a retry */
	COUNT_SB_WRITE_ERRORS,  /* write errors, per user */
	COUNT_SB_LAG,           /* gauge: events not yet read by the group */
	COUNT_SB_PENDING,       /* gauge: events read, not yet acked */
	COUNT_SB_OLDEST_MS,     /* gauge: age of the oldest event not acked */
	COUNT_MAX
};

extern const enum counter migrate_counters[], syncback_counters[]; /* each ends with COUNT_MAX */

void metrics_count(enum counter c, unsigned long long n);
void metrics_set(enum counter c, unsigned long long value);
unsigned long long metrics_get(enum counter c);
void metrics_batch_latency(int64_t us);
void metrics_error(const char *fmt, ...) CUTOVER_PRINTF(1, 2);
int metrics_start(const char *path, const enum counter *shown, char *err, size_t errlen);
void metrics_stop(void);

/* ---- consumer.c: a member of a Redis stream consumer group ------------ */

#define CONSUMER_STREAMS_MAX 2

struct consumer_options {
	const char *streams[CONSUMER_STREAMS_MAX]; /* the first one read first */
	int nstreams;
	const char *group;
	const char *name; /* this consumer's */
	int batch;        /* entries a stream and turn */
	int block_ms;
	int claim_idle_ms;
	int backoff_ms; /* after an outage, doubled for each one in a row */
	int backoff_max_ms;
	bool delete_acked; /* XDEL what is acked: the stream is ours */
};

/* A command of fixed, small arity, arguments with lengths. */
struct command {
	int argc;
	const char *argv[24];
	size_t len[24];
};

struct redisReply;
struct consumer;
/* Gets one entry: the index of its stream, its id and its fields (a flat
 * array reply of names and values). */
typedef void (*consumer_take_fn)(void *ctx, int stream, const char *id, const struct redisReply *fields,
				 bool claimed);
void consumer_options_init(struct consumer_options *o, const struct migrate_config *cfg, const char *group);
struct consumer *consumer_new(const char *redis_url, const struct consumer_options *o,
			      const volatile sig_atomic_t *stop, char *err, size_t errlen);
void consumer_free(struct consumer *c);
bool consumer_stopping(const struct consumer *c);
void consumer_sleep(const struct consumer *c, int ms);
int consumer_backoff_ms(const struct consumer *c, int n);
int consumer_wait_outage(const struct consumer *c, int *n);
int consumer_ready(struct consumer *c);
void consumer_lost(struct consumer *c, const char *what);
void consumer_refused(const struct consumer *c, const char *what, const struct redisReply *r);
int consumer_next_reply(struct consumer *c, const char *what, struct redisReply **r);
struct redisReply *consumer_command(struct consumer *c, const char *what, int argc, const char **argv,
				    const size_t *len);
int consumer_read(struct consumer *c, consumer_take_fn take, void *ctx);
int consumer_ack(struct consumer *c, size_t n, const int *stream, const char *const *ids);
struct redisContext *consumer_redis(const struct consumer *c);
void cmd_arg(struct command *cmd, const char *s, size_t len);
void cmd_str(struct command *cmd, const char *s);
void cmd_strs(struct command *cmd, ...) __attribute__((sentinel));
void cmd_send(struct consumer *c, struct command *cmd);

/* ---- batch.c: a turn's stream entries, recorded before they are acked -
 * The worker's and sync-back's common part; the order of effects is at
 * the top of batch.c. Their users' outcomes are deliveries: sync-back's
 * changes use the outcome fields only (user to recorded). */

/* What batch.c knows of a stream entry: the first member of the owner's. */
struct batch_entry {
	int stream; /* the index of its stream in the consumer's */
	char *id;
	bool claimed; /* taken over by XAUTOCLAIM */
	char *user;   /* the user field as sent, or NULL */
	size_t user_len;
	struct delivery *d; /* its user's outcome; NULL: malformed, its own dead-letter */
	bool recorded;      /* d NULL: the dead-letter is written */
	bool acked;
};

struct batch {
	void *entries; /* nentries of entry_size bytes, each a struct batch_entry first */
	size_t nentries;
	size_t entry_size;
	struct delivery **users; /* distinct; batch_turn's are freed with delivery_free */
	size_t nusers;
};

/* What an owner does with a batch; ctx is its batch_loop's. */
struct batch_ops {
	/* Fills in e beyond the common part; why: the user field's problem,
	 * or NULL. fields live only for the call. */
	void (*take)(void *ctx, struct batch_entry *e, const struct redisReply *fields, const char *why);
	size_t entry_size; /* of the owner's entries */
	/* Takes the batch through, batch_record included. Returns 0, or -1
	 * if stopped first. */
	int (*process)(void *ctx, struct batch *b);
	/* A record counts as written only if Redis accepted every command
	 * of it (else: its first, the HSET or XADD). */
	bool strict;
	/* Sends the record of d, delivered or dead (HDEL of its attempts
	 * follows). Returns how many commands it sent. */
	int (*send_record)(void *ctx, const struct batch *b, const struct delivery *d, const char *at);
	/* Sends the dead-letter XADD of the malformed entry e. */
	void (*send_dead_entry)(void *ctx, const struct batch_entry *e, const char *at);
	void (*clear)(struct batch *b); /* frees the owner's parts of b, or NULL */
};

struct batch_loop {
	const struct batch_ops *ops;
	void *ctx;
	struct consumer *q;       /* the owner's */
	const char *attempts_key; /* user -> failed attempts; the owner's */
	int attempts;             /* retry.attempts */
	int failing_batches;      /* consecutive batches with a retry */
	int failing_reads;        /* consecutive turns that could not read */
};

struct batch_entry *batch_entry_at(const struct batch *b, size_t i);
int batch_record(struct batch_loop *l, struct batch *b);
void batch_turn(struct batch_loop *l);

/* ---- worker.c -------------------------------------------------------- */

struct worker;
int user_id_check(const char *s, size_t len, const char **why);
int entry_user(const struct redisReply *fields, const char **user, size_t *len, const char **why);
void user_excerpt(const char *s, size_t len, char out[LOG_EXCERPT + 4]);
struct worker *worker_new(const struct migrate_config *cfg, const volatile sig_atomic_t *stop, char *err,
			  size_t errlen);
void worker_free(struct worker *w);
struct legacy *worker_legacy(const struct worker *w);
struct consumer *worker_consumer(const struct worker *w);
int worker_deliver(struct worker *w, struct delivery **users, size_t n);
int worker_run(const struct migrate_config *cfg, const volatile sig_atomic_t *stop);

/* ---- syncback.c ------------------------------------------------------ */

int syncback_run(const struct migrate_config *cfg, const volatile sig_atomic_t *stop);

/* ---- backfill.c -------------------------------------------------------- */

struct backfill_options {
	int rate;     /* users per second at most; 0: no limit */
	int batch;    /* documents per page */
	bool direct;  /* migrate each page through the sink, rather than enqueue */
	bool restart; /* forget the stored cursor: walk from the start */
};

int backfill_run(const struct migrate_config *cfg, const struct backfill_options *opts,
		 const volatile sig_atomic_t *stop);

/* ---- verify.c: a migrated user's copies in legacy and in the service -- */

enum verify_outcome {
	VERIFY_SAME,           /* every compared field is equal */
	VERIFY_GONE,           /* absent (or deleted) on both sides: consistent too */
	VERIFY_DRIFT,          /* fields differ: see fields */
	VERIFY_NOT_IN_SERVICE, /* in legacy only (deleted in the service counts as absent) */
	VERIFY_NOT_IN_LEGACY,  /* in the service only */
	VERIFY_UNMAPPABLE,     /* the mapping refuses the legacy document: see why */
};

enum verify_kind {
	VERIFY_DIFFERS, /* on both sides, with different values */
	VERIFY_MISSING, /* in the mapped legacy document, not in the service's */
	VERIFY_EXTRA,   /* in the service's document only */
};

struct verify_field {
	enum verify_kind kind;
	char *name;
	char *legacy;  /* the value as relaxed extended JSON; NULL for VERIFY_EXTRA */
	char *service; /* likewise; NULL for VERIFY_MISSING */
};

struct verify_report {
	enum verify_outcome outcome;
	struct verify_field *fields; /* VERIFY_DRIFT: in legacy's order, then the extra ones */
	size_t nfields;
	char why[DELIVERY_ERROR_MAX]; /* VERIFY_UNMAPPABLE */
};

int verify_parse_time(const char *s, size_t len, int64_t *ms);
bool verify_values_equal(const bson_iter_t *legacy, const bson_iter_t *service);
bool verify_is_deleted(const bson_t *doc);
void verify_user(const struct mapping *m, char *const *ignore, size_t nignore, const bson_t *legacy,
		 const bson_t *service, struct verify_report *out);
void verify_report_free(struct verify_report *r);

struct verify_service;
struct verify_service *verify_service_open(const struct migrate_config *cfg, char *err, size_t errlen);
void verify_service_close(struct verify_service *s);
int verify_service_load(struct verify_service *s, struct delivery *const *items, size_t n, bson_t **docs,
			char *err, size_t errlen);

#endif
