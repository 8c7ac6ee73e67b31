/*
 * worker.c - the consume loop of cutover-migrate (Redis layout in
 * docs/design.md, "Lazy migration").
 *
 * Each turn takes one batch: entries idle for claim_idle taken over with
 * XAUTOCLAIM (looked for at most once a second), or else new entries
 * from one XREADGROUP over both streams. A batch goes through:
 *
 *   1. user ids: a malformed entry (no user field, not UTF-8, empty or
 *      over 256 bytes, control characters) goes to the dead-letter
 *      stream with reason malformed;
 *   2. one find {_id: {$in: [...]}} in legacy; a user it does not
 *      return is dead-lettered as not-found;
 *   3. the mapping; a document it cannot map is dead-lettered (mapping);
 *   4. the sink, priority entries' users first: delivered, retry,
 *      dead (sink-4xx) or deferred (not tried: the sink is down);
 *   5. Redis, in three pipelined round trips: count attempts (HINCRBY
 *      for each retry; HGET for each dead-letter, whose entry says how
 *      many failed before it); record (per delivered user HSET
 *      <p>:migrated, PUBLISH <p>:migrated:changed, HDEL
 *      <p>:migrate:attempts; per dead-lettered user XADD
 *      <p>:migrate:dead, HDEL attempts); and only then XACK the entries
 *      whose HSET or XADD Redis accepted. A refused record (a Redis out
 *      of memory still takes XACK) leaves its entry pending.
 *
 * Retries: a retryable failure (5xx, timeout, unreachable sink) leaves
 * the entry pending, not acked. Once idle for claim_idle, XAUTOCLAIM
 * hands it back, to this worker or another; when the attempts counted
 * in <p>:migrate:attempts reach retry.attempts, it is dead-lettered with
 * reason attempts and the last error, and acked. No entry is acked
 * before its user is in the service or in the dead-letter stream. A
 * batch with a retryable failure is followed by a pause of retry.backoff
 * ms, doubled for each consecutive such batch up to retry.backoff_max.
 * A deferred user is left pending the same way, without an attempt.
 *
 * Outages: a failed legacy find, or a Redis that cannot be reached,
 * costs no attempt: the batch in hand is tried again after the same
 * backoff until it goes through. A reply lost with the connection may
 * leave an attempt counted twice or a dead-letter entry written twice.
 *
 * Stopping: once *stop is set (the first SIGTERM or SIGINT), the batch
 * in hand is finished and the loop ends; a wait for an outage ends at
 * once, leaving that batch's entries pending for whoever comes next.
 *
 * The reading, acking and outage waits are consumer.c's, shared with
 * sync-back. The backfill (backfill.c) uses a worker from worker_new for
 * its Redis commands and outage waits (through worker_consumer), and
 * worker_deliver for steps 3 to 5 of users it read from legacy itself,
 * with no stream entries to ack.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "migrator/migrator.h"

#define GROUP "migrators"

enum stream { STREAM_PRIORITY, STREAM_NORMAL, NSTREAMS };

/* One stream entry of a batch. */
struct entry {
	enum stream stream;
	char *id;
	bool claimed;        /* taken over by XAUTOCLAIM */
	char *user;          /* the user field as sent, or NULL */
	size_t user_len;
	const char *malformed; /* why the user field is unusable, or NULL */
	struct delivery *d;  /* the user's delivery; NULL when malformed */
	bool recorded;       /* malformed: its dead-letter entry is written */
	bool acked;
};

struct batch {
	struct entry *entries;
	size_t nentries;
	struct delivery **users; /* distinct users, priority ones first */
	size_t nusers;
	int64_t started_us;
};

struct worker {
	const struct migrate_config *cfg;
	struct consumer *q;
	struct legacy *legacy;
	struct sink *sink;
	char *streams[NSTREAMS];
	char *dead_key;
	char *attempts_key;
	char *migrated_key;
	char *changed_channel;
	int failing_batches; /* consecutive batches with a retry */
	int failing_reads;   /* consecutive turns that could not read */
};

/* Sets d's outcome, reason (for a dead-letter) and error text. */
void delivery_set(struct delivery *d, enum outcome outcome, const char *reason, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(d->error, sizeof(d->error), fmt, ap);
	va_end(ap);
	d->outcome = outcome;
	d->reason = reason;
}

/* Frees d and the documents it owns. */
void delivery_free(struct delivery *d)
{
	free(d->user);
	if (d->legacy)
		bson_destroy(d->legacy);
	if (d->doc)
		bson_destroy(d->doc);
	free(d);
}

/* Makes a user that an earlier worker_deliver left pending (retry or
 * deferred) ready for the next one: the legacy document stays, the
 * mapped one and the outcome go. */
void delivery_again(struct delivery *d)
{
	if (d->doc)
		bson_destroy(d->doc);
	d->doc = NULL;
	d->outcome = OUTCOME_NONE;
	d->counted = false;
}

/*
 * Whether s[0..len) can be a user id: 1 to 256 bytes of UTF-8 without
 * control characters (C0, DEL or C1). Returns 0, or -1 with *why.
 */
int user_id_check(const char *s, size_t len, const char **why)
{
	if (len == 0) {
		*why = "empty";
		return -1;
	}
	if (len > USER_ID_MAX) {
		*why = "longer than 256 bytes";
		return -1;
	}
	if (!utf8_valid(s, len)) {
		*why = "not UTF-8";
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || (c == 0xc2 && i + 1 < len && (unsigned char)s[i + 1] < 0xa0)) {
			*why = "has a control character";
			return -1;
		}
	}
	return 0;
}

/*
 * Finds the user field among an entry's fields (a flat array reply of
 * names and values) and checks it. Returns 0 with *user and *len set
 * (pointing into fields), or -1 with *why; *user is then the field as
 * sent, or NULL when there is none.
 */
int entry_user(const redisReply *fields, const char **user, size_t *len, const char **why)
{
	*user = NULL;
	*len = 0;
	for (size_t i = 0; fields && fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2) {
		const redisReply *k = fields->element[i], *v = fields->element[i + 1];
		if (k->type != REDIS_REPLY_STRING || k->len != 4 || memcmp(k->str, "user", 4) != 0)
			continue;
		if (v->type != REDIS_REPLY_STRING)
			break;
		*user = v->str;
		*len = v->len;
		return user_id_check(v->str, v->len, why);
	}
	*why = "no user field";
	return -1;
}

/* A text fit for a log line: at most LOG_EXCERPT bytes, non-printable
 * bytes as '?'. */
void user_excerpt(const char *s, size_t len, char out[LOG_EXCERPT + 4])
{
	size_t n = len < LOG_EXCERPT ? len : LOG_EXCERPT;
	for (size_t i = 0; i < n; i++)
		out[i] = (unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f ? '?' : s[i];
	strcpy(out + n, len > n ? "..." : "");
}

/* ---- batches ---------------------------------------------------------- */

/* consumer_take_fn: adds one entry to the batch ctx. */
static void take_entry(void *ctx, int stream, const char *id, const redisReply *fields, bool claimed)
{
	struct batch *b = ctx;
	const char *user;
	size_t len;
	b->entries = xrealloc(b->entries, (b->nentries + 1) * sizeof(*b->entries));
	struct entry *e = &b->entries[b->nentries++];
	memset(e, 0, sizeof(*e));
	e->stream = (enum stream)stream;
	e->id = xstrdup(id);
	e->claimed = claimed;
	if (entry_user(fields, &user, &len, &e->malformed) < 0 && user == NULL)
		return;
	e->user = xstrndup(user, len);
	e->user_len = len;
}

static int compare_entry_users(const void *a, const void *b)
{
	const struct entry *x = *(struct entry *const *)a, *y = *(struct entry *const *)b;
	int c = strcmp(x->user, y->user);
	return c != 0 ? c : (int)x->stream - (int)y->stream;
}

/* A new delivery for the entries byuser[i..] of one user. */
static struct delivery *user_delivery(struct entry **byuser, size_t i, size_t n)
{
	struct delivery *d = xcalloc(1, sizeof(*d));
	d->user = xstrdup(byuser[i]->user);
	for (size_t k = i; k < n && strcmp(byuser[k]->user, d->user) == 0; k++)
		byuser[k]->d = d;
	return d;
}

/*
 * Gives every well-formed entry its delivery: one per distinct user, so
 * a user on both streams is loaded and delivered once. Users with a
 * priority entry come first: sorted by user then stream, the first entry
 * of a user tells whether it has one.
 */
static void collect_users(struct batch *b)
{
	struct entry **byuser = xcalloc(b->nentries + 1, sizeof(*byuser));
	size_t n = 0;
	for (size_t i = 0; i < b->nentries; i++)
		if (b->entries[i].malformed == NULL)
			byuser[n++] = &b->entries[i];
	qsort(byuser, n, sizeof(*byuser), compare_entry_users);
	b->users = xcalloc(n + 1, sizeof(*b->users));
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < n; i++) {
			bool first = i == 0 || strcmp(byuser[i - 1]->user, byuser[i]->user) != 0;
			bool priority = byuser[i]->stream == STREAM_PRIORITY;
			if (first && priority == (pass == 0))
				b->users[b->nusers++] = user_delivery(byuser, i, n);
		}
	}
	free(byuser);
}

static void batch_free(struct batch *b)
{
	for (size_t i = 0; i < b->nentries; i++) {
		free(b->entries[i].id);
		free(b->entries[i].user);
	}
	free(b->entries);
	for (size_t i = 0; i < b->nusers; i++)
		delivery_free(b->users[i]);
	free(b->users);
	memset(b, 0, sizeof(*b));
}

/* ---- a batch's way through -------------------------------------------- */

/* Loads the users' legacy documents, waiting out a failing find. Returns
 * -1 if the worker stopped meanwhile (the batch is left as it is). */
static int load_legacy(struct worker *w, struct batch *b)
{
	char err[MIGRATE_ERR_MAX];
	int outages = 0;
	while (legacy_load(w->legacy, b->users, b->nusers, err, sizeof(err)) < 0) {
		log_warn("legacy: %s; %zu users wait, no attempt counted", err, b->nusers);
		metrics_count(COUNT_LEGACY_ERRORS, 1);
		metrics_error("legacy: %s", err);
		if (consumer_wait_outage(w->q, &outages) < 0)
			return -1;
	}
	return 0;
}

/* not-found for users legacy lacks; the mapping for the others. */
static void map_users(struct worker *w, struct batch *b)
{
	char why[DELIVERY_ERROR_MAX];
	for (size_t i = 0; i < b->nusers; i++) {
		struct delivery *d = b->users[i];
		if (d->legacy == NULL) {
			delivery_set(d, OUTCOME_DEAD, "not-found", "no document with this _id in %s.%s",
				     w->cfg->legacy.database, w->cfg->legacy.collection);
			continue;
		}
		d->doc = bson_new();
		if (mapping_apply(&w->cfg->mapping, d->legacy, d->doc, why, sizeof(why)) < 0)
			delivery_set(d, OUTCOME_DEAD, "mapping", "%s", why);
	}
}

static bool needs_count(const struct delivery *d)
{
	return !d->counted && (d->outcome == OUTCOME_RETRY || d->outcome == OUTCOME_DEAD);
}

/*
 * Round trip 1: HINCRBY attempts for each retry, HGET for each
 * dead-letter. A retry that reached retry.attempts becomes a dead-letter
 * with reason attempts. Returns -1 when the connection failed.
 */
static int count_attempts(struct worker *w, struct batch *b)
{
	struct command c = { 0 };
	size_t sent = 0;
	for (size_t i = 0; i < b->nusers; i++) {
		struct delivery *d = b->users[i];
		if (!needs_count(d))
			continue;
		cmd_str(&c, d->outcome == OUTCOME_RETRY ? "HINCRBY" : "HGET");
		cmd_str(&c, w->attempts_key);
		cmd_str(&c, d->user);
		if (d->outcome == OUTCOME_RETRY)
			cmd_str(&c, "1");
		cmd_send(w->q, &c);
		sent++;
	}
	for (size_t i = 0; i < b->nusers && sent > 0; i++) {
		struct delivery *d = b->users[i];
		redisReply *r;
		if (!needs_count(d))
			continue;
		if (consumer_next_reply(w->q, "counting attempts", &r) < 0)
			return -1;
		sent--;
		if (r->type == REDIS_REPLY_INTEGER)
			d->attempts = r->integer;
		else if (r->type == REDIS_REPLY_STRING)
			d->attempts = strtoll(r->str, NULL, 10);
		else if (r->type == REDIS_REPLY_ERROR)
			consumer_refused(w->q, d->outcome == OUTCOME_RETRY ? "HINCRBY" : "HGET", r);
		d->counted = true;
		if (d->outcome == OUTCOME_RETRY && d->attempts >= w->cfg->attempts)
			d->reason = "attempts", d->outcome = OUTCOME_DEAD;
		freeReplyObject(r);
	}
	return 0;
}

/* The dead-letter entry: user, reason, error, attempts, at. */
static void send_dead_letter(struct worker *w, const char *user, size_t len, const char *reason,
			     const char *error, long long attempts, const char *at)
{
	struct command c = { 0 };
	char count[24];
	snprintf(count, sizeof(count), "%lld", attempts);
	cmd_str(&c, "XADD");
	cmd_str(&c, w->dead_key);
	cmd_str(&c, "*");
	cmd_str(&c, "user");
	cmd_arg(&c, user, len);
	cmd_str(&c, "reason");
	cmd_str(&c, reason);
	cmd_str(&c, "error");
	cmd_str(&c, error);
	cmd_str(&c, "attempts");
	cmd_str(&c, count);
	cmd_str(&c, "at");
	cmd_str(&c, at);
	cmd_send(w->q, &c);
}

/* Sends a user's record: 3 commands for a delivered user, 2 for a
 * dead-letter; the first is the one that must succeed. */
static int send_record(struct worker *w, const struct delivery *d, const char *at)
{
	struct command c = { 0 };
	if (d->outcome == OUTCOME_DELIVERED) {
		cmd_str(&c, "HSET");
		cmd_str(&c, w->migrated_key);
		cmd_str(&c, d->user);
		cmd_str(&c, at);
		cmd_send(w->q, &c);
		cmd_str(&c, "PUBLISH");
		cmd_str(&c, w->changed_channel);
		cmd_str(&c, d->user);
		cmd_send(w->q, &c);
	} else {
		send_dead_letter(w, d->user, strlen(d->user), d->reason, d->error, d->attempts, at);
	}
	cmd_str(&c, "HDEL");
	cmd_str(&c, w->attempts_key);
	cmd_str(&c, d->user);
	cmd_send(w->q, &c);
	return d->outcome == OUTCOME_DELIVERED ? 3 : 2;
}

static bool needs_record(const struct delivery *d)
{
	return !d->recorded && (d->outcome == OUTCOME_DELIVERED || d->outcome == OUTCOME_DEAD);
}

/* Reads the n replies of one record; *ok is whether the first, the HSET
 * or XADD, was accepted. Returns -1 when the connection failed. */
static int read_record(struct worker *w, int n, bool *ok)
{
	static const char *const what[] = { "the record", "PUBLISH", "HDEL" };
	for (int k = 0; k < n; k++) {
		redisReply *r;
		if (consumer_next_reply(w->q, "recording outcomes", &r) < 0)
			return -1;
		if (r->type == REDIS_REPLY_ERROR)
			consumer_refused(w->q, what[k == 0 ? 0 : k == n - 1 ? 2 : 1], r);
		if (k == 0)
			*ok = r->type != REDIS_REPLY_ERROR;
		freeReplyObject(r);
	}
	return 0;
}

/* Round trip 2: each delivered or dead-lettered user's record, and each
 * malformed entry's dead-letter. Returns -1 when the connection failed. */
static int write_records(struct worker *w, struct batch *b)
{
	char at[24];
	int *counts = xcalloc(b->nusers + 1, sizeof(*counts));
	snprintf(at, sizeof(at), "%lld", (long long)(clock_realtime_us() / 1000));
	for (size_t i = 0; i < b->nusers; i++)
		if (needs_record(b->users[i]))
			counts[i] = send_record(w, b->users[i], at);
	for (size_t i = 0; i < b->nentries; i++) {
		const struct entry *e = &b->entries[i];
		if (e->malformed && !e->recorded)
			send_dead_letter(w, e->user ? e->user : "", e->user_len, "malformed", e->malformed, 0, at);
	}
	int rc = 0;
	for (size_t i = 0; i < b->nusers && rc == 0; i++)
		if (counts[i] > 0)
			rc = read_record(w, counts[i], &b->users[i]->recorded);
	for (size_t i = 0; i < b->nentries && rc == 0; i++)
		if (b->entries[i].malformed && !b->entries[i].recorded)
			rc = read_record(w, 1, &b->entries[i].recorded);
	free(counts);
	return rc;
}

/* Whether an entry may be acked: its user's outcome is in Redis. */
static bool ackable(const struct entry *e)
{
	return !e->acked && (e->d ? e->d->recorded : e->recorded);
}

/* Round trip 3: XACK, then XDEL, of the entries whose record Redis
 * accepted: an acknowledged entry is done with (its outcome is in
 * migrated or in the dead-letter stream), and a stream that kept them
 * would grow by one entry per user forever. Returns -1 when the
 * connection failed. */
static int ack_entries(struct worker *w, struct batch *b)
{
	const char **ids = xcalloc(b->nentries + 1, sizeof(*ids));
	int *streams = xcalloc(b->nentries + 1, sizeof(*streams));
	size_t n = 0;
	for (size_t i = 0; i < b->nentries; i++) {
		if (ackable(&b->entries[i])) {
			streams[n] = (int)b->entries[i].stream;
			ids[n++] = b->entries[i].id;
		}
	}
	int rc = n > 0 ? consumer_ack(w->q, n, streams, ids) : 0;
	for (size_t i = 0; i < b->nentries && rc == 0; i++)
		if (ackable(&b->entries[i]))
			b->entries[i].acked = true;
	free(ids);
	free(streams);
	return rc;
}

/* Counts, records and acks, reconnecting as needed. Returns -1 if the
 * worker stopped before Redis had it all. */
static int record(struct worker *w, struct batch *b)
{
	int outages = 0;
	while (consumer_ready(w->q) < 0 || count_attempts(w, b) < 0 || write_records(w, b) < 0 || ack_entries(w, b) < 0)
		if (consumer_wait_outage(w->q, &outages) < 0)
			return -1;
	return 0;
}

/* The dead-letter counter of a reason. */
static enum counter reason_counter(const char *reason)
{
	if (strcmp(reason, "not-found") == 0)
		return COUNT_NOT_FOUND;
	if (strcmp(reason, "mapping") == 0)
		return COUNT_MAPPING;
	if (strcmp(reason, "sink-4xx") == 0)
		return COUNT_SINK_4XX;
	return COUNT_ATTEMPTS;
}

/* A log line and counters for each outcome Redis now holds. */
static void report(struct worker *w, const struct batch *b)
{
	char text[LOG_EXCERPT + 4];
	for (size_t i = 0; i < b->nentries; i++) {
		const struct entry *e = &b->entries[i];
		if (e->malformed == NULL || !e->recorded)
			continue;
		user_excerpt(e->user ? e->user : "", e->user_len, text);
		log_warn("entry %s of %s: user '%s' is malformed (%s): dead-lettered", e->id, w->streams[e->stream],
			 text, e->malformed);
		metrics_error("entry %s: malformed user (%s)", e->id, e->malformed);
		metrics_count(COUNT_DEAD, 1);
		metrics_count(COUNT_MALFORMED, 1);
	}
	for (size_t i = 0; i < b->nusers; i++) {
		const struct delivery *d = b->users[i];
		if (d->outcome == OUTCOME_DELIVERED && d->recorded) {
			log_debug("user %s: migrated (%s)", d->user, d->error);
			metrics_count(COUNT_MIGRATED, 1);
		} else if (d->outcome == OUTCOME_DEAD && d->recorded) {
			log_warn("user %s: dead-lettered (%s) after %lld failed attempts: %s", d->user, d->reason,
				 d->attempts, d->error);
			metrics_error("user %s: %s: %s", d->user, d->reason, d->error);
			metrics_count(COUNT_DEAD, 1);
			metrics_count(reason_counter(d->reason), 1);
		} else if (d->outcome == OUTCOME_RETRY) {
			log_warn("user %s: attempt %lld of %d failed, left pending for a retry: %s", d->user,
				 d->attempts, w->cfg->attempts, d->error);
			metrics_error("user %s: %s", d->user, d->error);
			metrics_count(COUNT_FAILED, 1);
		} else if (d->outcome == OUTCOME_DEFERRED) {
			log_warn("user %s: left pending, no attempt counted: %s", d->user, d->error);
			metrics_count(COUNT_DEFERRED, 1);
		}
	}
}

/* Whether any user of b is left pending for a retry. */
static bool has_retry(const struct batch *b)
{
	for (size_t i = 0; i < b->nusers; i++)
		if (b->users[i]->outcome == OUTCOME_RETRY || b->users[i]->outcome == OUTCOME_DEFERRED)
			return true;
	return false;
}

/* Steps 3 to 5 for the users of b, their legacy documents loaded: the
 * mapping, the sink, Redis, and the report. Returns -1 if the worker
 * stopped before Redis had it all. */
static int deliver_users(struct worker *w, struct batch *b)
{
	map_users(w, b);
	w->sink->deliver(w->sink, b->users, b->nusers);
	if (record(w, b) < 0)
		return -1;
	report(w, b);
	return 0;
}

/*
 * Steps 3 to 5 for users read from legacy by the caller (distinct, each
 * with its legacy document, or NULL for one legacy lacks), as for a
 * batch without stream entries. Each keeps its outcome: delivered and
 * dead users are recorded in Redis; retry and deferred ones are not (see
 * delivery_again). Returns -1 if the worker stopped before Redis had
 * them all.
 */
int worker_deliver(struct worker *w, struct delivery **users, size_t n)
{
	struct batch b = { .users = users, .nusers = n };
	return deliver_users(w, &b);
}

/* Takes one batch all the way (see the top of this file). */
static void process(struct worker *w, struct batch *b)
{
	size_t claimed = 0;
	for (size_t i = 0; i < b->nentries; i++)
		claimed += b->entries[i].claimed;
	metrics_count(COUNT_PROCESSED, b->nentries);
	metrics_count(COUNT_RETRIED, claimed);
	b->started_us = clock_monotonic_us();
	collect_users(b);
	if (b->nusers > 0 && load_legacy(w, b) < 0) {
		log_info("stopping during a legacy outage: %zu entries stay pending", b->nentries);
		return;
	}
	if (deliver_users(w, b) < 0) {
		log_info("stopping during a Redis outage: the entries not acked stay pending");
		return;
	}
	metrics_batch_latency(clock_monotonic_us() - b->started_us);
	log_debug("batch of %zu entries, %zu users, %zu taken over: %.1f ms", b->nentries, b->nusers, claimed,
		  (double)(clock_monotonic_us() - b->started_us) / 1000.0);
	if (has_retry(b))
		consumer_sleep(w->q, consumer_backoff_ms(w->q, ++w->failing_batches));
	else
		w->failing_batches = 0;
}

/* One turn: a batch of taken-over entries if a look for them is due and
 * finds some, else of new entries. */
static void turn(struct worker *w)
{
	struct batch b = { 0 };
	int rc = consumer_read(w->q, take_entry, &b);
	if (b.nentries > 0)
		process(w, &b);
	if (rc < 0 && b.nentries == 0)
		consumer_wait_outage(w->q, &w->failing_reads);
	else if (rc == 0)
		w->failing_reads = 0;
	batch_free(&b);
}

/*
 * A worker for cfg that stops once *stop is set: its keys, the Redis
 * URL, the legacy reader and the sink; nothing is connected yet. Returns
 * it (free it with worker_free), or NULL with err.
 */
struct worker *worker_new(const struct migrate_config *cfg, const volatile sig_atomic_t *stop, char *err,
			  size_t errlen)
{
	static const char *const suffix[NSTREAMS] = { "migrate:priority", "migrate" };
	struct worker *w = xcalloc(1, sizeof(*w));
	struct consumer_options o;
	struct buf k;
	w->cfg = cfg;
	buf_init(&k);
	for (int s = 0; s < NSTREAMS; s++) {
		buf_printf(&k, "%s:%s", cfg->redis_prefix, suffix[s]);
		w->streams[s] = buf_detach(&k);
	}
	buf_printf(&k, "%s:migrate:dead", cfg->redis_prefix);
	w->dead_key = buf_detach(&k);
	buf_printf(&k, "%s:migrate:attempts", cfg->redis_prefix);
	w->attempts_key = buf_detach(&k);
	buf_printf(&k, "%s:migrated", cfg->redis_prefix);
	w->migrated_key = buf_detach(&k);
	buf_printf(&k, "%s:migrated:changed", cfg->redis_prefix);
	w->changed_channel = buf_detach(&k);
	consumer_options_init(&o, cfg, GROUP);
	for (int s = 0; s < NSTREAMS; s++)
		o.streams[o.nstreams++] = w->streams[s];
	o.delete_acked = true;
	w->q = consumer_new(cfg->redis_url, &o, stop, err, errlen);
	if (w->q == NULL)
		goto fail;
	w->legacy = legacy_open(cfg, err, errlen);
	if (w->legacy == NULL)
		goto fail;
	w->sink = cfg->sink == SINK_HTTP ? sink_http_new(cfg, err, errlen) : sink_mongo_new(cfg, err, errlen);
	if (w->sink == NULL)
		goto fail;
	return w;
fail:
	worker_free(w);
	return NULL;
}

/* Frees w (NULL is fine) and closes its connections. */
void worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	if (w->sink)
		w->sink->free(w->sink);
	legacy_close(w->legacy);
	consumer_free(w->q);
	for (int s = 0; s < NSTREAMS; s++)
		free(w->streams[s]);
	free(w->dead_key);
	free(w->attempts_key);
	free(w->migrated_key);
	free(w->changed_channel);
	free(w);
}

/* The Redis side of w: its consumer of the migrate streams. */
struct consumer *worker_consumer(const struct worker *w)
{
	return w->q;
}

/* The legacy reader of w. */
struct legacy *worker_legacy(const struct worker *w)
{
	return w->legacy;
}

/*
 * Runs the loop until *stop is set, then returns 0 with the batch in
 * hand finished; returns 1 when the worker cannot start (logged).
 */
int worker_run(const struct migrate_config *cfg, const volatile sig_atomic_t *stop)
{
	char err[MIGRATE_ERR_MAX];
	struct worker *w = worker_new(cfg, stop, err, sizeof(err));
	if (w == NULL || (cfg->metrics_file && metrics_start(cfg->metrics_file, migrate_counters, err, sizeof(err)) < 0)) {
		log_error("%s", err);
		worker_free(w);
		return 1;
	}
	log_info("migrating %s.%s to the %s sink: batch %d, claim_idle %d ms, %d attempts%s%s", cfg->legacy.database,
		 cfg->legacy.collection, sink_type_name(cfg->sink), cfg->batch, cfg->claim_idle_ms, cfg->attempts,
		 cfg->metrics_file ? ", metrics in " : "", cfg->metrics_file ? cfg->metrics_file : "");
	while (!*stop)
		turn(w);
	log_info("stopped: %llu entries processed, %llu users migrated, %llu dead-lettered",
		 metrics_get(COUNT_PROCESSED), metrics_get(COUNT_MIGRATED), metrics_get(COUNT_DEAD));
	metrics_stop();
	worker_free(w);
	return 0;
}
