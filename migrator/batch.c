/*
 * batch.c - one turn of a consumer of user streams: the migrate worker
 * (worker.c) and sync-back (syncback.c). A batch is read (consumer.c),
 * taken through by its owner, which decides each user's outcome, and
 * then made durable in Redis before any entry is acked, in three
 * pipelined round trips:
 *
 *   1. count attempts: HINCRBY <attempts> user for each retry, HGET for
 *      each dead user (its dead-letter says how many failed before it).
 *      A retry whose attempts reach retry.attempts is dead, with the
 *      reason the retry gave, or "attempts";
 *   2. record: per delivered or dead user, the owner's commands (HSET
 *      migrated, or the dead-letter XADD, ...), then HDEL of its
 *      attempts; per malformed entry, its own dead-letter;
 *   3. XACK (and XDEL where the stream is ours) of the entries whose
 *      record Redis accepted: its first command, the HSET or XADD, or
 *      with ops->strict every one. A refused record (a Redis out of
 *      memory still takes XACK) leaves its entry pending, to be taken
 *      over again once idle for claim_idle.
 *
 * A lost connection is an outage, waited out with the backoff: the
 * steps are sent again from the first not done (counted, recorded and
 * acked are kept per user and entry), so an outage costs no attempt. A
 * reply lost with the connection may leave an attempt counted twice or
 * a record written twice.
 *
 * A batch with a user left pending (retry, or not tried) is followed by
 * a pause of retry.backoff ms, doubled for each such batch in a row up
 * to retry.backoff_max; a read that fails is waited out the same way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "migrator/migrator.h"

/* The i-th entry of b (borrowed). */
struct batch_entry *batch_entry_at(const struct batch *b, size_t i)
{
	return (struct batch_entry *)((char *)b->entries + i * b->entry_size);
}

/* ---- 1. attempts --------------------------------------------------------- */

static bool needs_count(const struct delivery *d)
{
	return !d->counted && (d->outcome == OUTCOME_RETRY || d->outcome == OUTCOME_DEAD);
}

/* d's attempts from the reply r to its HINCRBY or HGET (nil: none). */
static void take_attempts(const struct batch_loop *l, struct delivery *d, const redisReply *r)
{
	if (r->type == REDIS_REPLY_INTEGER)
		d->attempts = r->integer;
	else if (r->type == REDIS_REPLY_STRING)
		d->attempts = strtoll(r->str, NULL, 10);
	else if (r->type == REDIS_REPLY_ERROR)
		consumer_refused(l->q, d->outcome == OUTCOME_RETRY ? "HINCRBY" : "HGET", r);
	d->counted = true;
	if (d->outcome == OUTCOME_RETRY && d->attempts >= l->attempts) {
		d->outcome = OUTCOME_DEAD;
		if (d->reason == NULL)
			d->reason = "attempts";
	}
}

/* Round trip 1. Returns -1 when the connection failed. */
static int count_attempts(const struct batch_loop *l, struct batch *b)
{
	struct command c = { 0 };
	size_t sent = 0;
	for (size_t i = 0; i < b->nusers; i++) {
		const struct delivery *d = b->users[i];
		if (!needs_count(d))
			continue;
		cmd_strs(&c, d->outcome == OUTCOME_RETRY ? "HINCRBY" : "HGET", l->attempts_key, d->user, NULL);
		if (d->outcome == OUTCOME_RETRY)
			cmd_str(&c, "1");
		cmd_send(l->q, &c);
		sent++;
	}
	for (size_t i = 0; i < b->nusers && sent > 0; i++) {
		redisReply *r;
		if (!needs_count(b->users[i]))
			continue;
		if (consumer_next_reply(l->q, "counting attempts", &r) < 0)
			return -1;
		sent--;
		take_attempts(l, b->users[i], r);
		freeReplyObject(r);
	}
	return 0;
}

/* ---- 2. records ---------------------------------------------------------- */

static bool needs_record(const struct delivery *d)
{
	return !d->recorded && (d->outcome == OUTCOME_DELIVERED || d->outcome == OUTCOME_DEAD);
}

/* Whether e is malformed and its dead-letter not written yet. */
static bool needs_dead_letter(const struct batch_entry *e)
{
	return e->d == NULL && !e->recorded;
}

/* Sends d's record, the owner's commands then HDEL of the attempts the
 * outcome makes moot. Returns how many commands it sent. */
static int send_record(const struct batch_loop *l, const struct batch *b, const struct delivery *d, const char *at)
{
	struct command c = { 0 };
	int n = l->ops->send_record(l->ctx, b, d, at);
	cmd_strs(&c, "HDEL", l->attempts_key, d->user, NULL);
	cmd_send(l->q, &c);
	return n + 1;
}

/*
 * Reads the n replies of one record; *ok is whether Redis accepted the
 * first, or with ops->strict all of them, and is set only once those are
 * read: a reply lost with the connection leaves the record to be sent
 * again. Returns -1 when the connection failed.
 */
static int read_record(const struct batch_loop *l, int n, bool *ok)
{
	bool accepted = true;
	for (int k = 0; k < n; k++) {
		redisReply *r;
		if (consumer_next_reply(l->q, "recording outcomes", &r) < 0)
			return -1;
		if (r->type == REDIS_REPLY_ERROR) {
			consumer_refused(l->q, k == 0 ? "the record" : "a command of the record", r);
			accepted = accepted && k > 0 && !l->ops->strict;
		}
		freeReplyObject(r);
		if (k == 0 && !l->ops->strict)
			*ok = accepted;
	}
	*ok = accepted;
	return 0;
}

/* Round trip 2: the users' records, then the malformed entries'
 * dead-letters. Returns -1 when the connection failed. */
static int write_records(const struct batch_loop *l, struct batch *b)
{
	char at[24];
	int *counts = xcalloc(b->nusers + 1, sizeof(*counts));
	snprintf(at, sizeof(at), "%lld", (long long)(clock_realtime_us() / 1000));
	for (size_t i = 0; i < b->nusers; i++)
		if (needs_record(b->users[i]))
			counts[i] = send_record(l, b, b->users[i], at);
	for (size_t i = 0; i < b->nentries; i++)
		if (needs_dead_letter(batch_entry_at(b, i)))
			l->ops->send_dead_entry(l->ctx, batch_entry_at(b, i), at);
	int rc = 0;
	for (size_t i = 0; i < b->nusers && rc == 0; i++)
		if (counts[i] > 0)
			rc = read_record(l, counts[i], &b->users[i]->recorded);
	for (size_t i = 0; i < b->nentries && rc == 0; i++)
		if (needs_dead_letter(batch_entry_at(b, i)))
			rc = read_record(l, 1, &batch_entry_at(b, i)->recorded);
	free(counts);
	return rc;
}

/* ---- 3. acks ------------------------------------------------------------- */

/* Whether an entry may be acked: its outcome is in Redis. */
static bool ackable(const struct batch_entry *e)
{
	return !e->acked && (e->d ? e->d->recorded : e->recorded);
}

/* Round trip 3: an acknowledged entry is done with, and one of a stream
 * the consumer deletes from is gone. Returns -1 when the connection
 * failed. */
static int ack_entries(const struct batch_loop *l, struct batch *b)
{
	const char **ids = xcalloc(b->nentries + 1, sizeof(*ids));
	int *streams = xcalloc(b->nentries + 1, sizeof(*streams));
	size_t n = 0;
	for (size_t i = 0; i < b->nentries; i++) {
		const struct batch_entry *e = batch_entry_at(b, i);
		if (ackable(e)) {
			streams[n] = e->stream;
			ids[n++] = e->id;
		}
	}
	int rc = n > 0 ? consumer_ack(l->q, n, streams, ids) : 0;
	for (size_t i = 0; i < b->nentries && rc == 0; i++)
		if (ackable(batch_entry_at(b, i)))
			batch_entry_at(b, i)->acked = true;
	free(ids);
	free(streams);
	return rc;
}

/*
 * Counts, records and acks b's outcomes (see the top of this file),
 * reconnecting as needed; b may have users without entries (the
 * backfill's). Returns -1 if stopped before Redis had it all.
 */
int batch_record(struct batch_loop *l, struct batch *b)
{
	int outages = 0;
	while (consumer_ready(l->q) < 0 || count_attempts(l, b) < 0 || write_records(l, b) < 0 || ack_entries(l, b) < 0)
		if (consumer_wait_outage(l->q, &outages) < 0)
			return -1;
	return 0;
}

/* ---- a turn -------------------------------------------------------------- */

/* consumer_take_fn: adds an entry to the batch of ctx ({loop, batch}),
 * its common part here, the rest by the owner's take. */
static void take_entry(void *ctx, int stream, const char *id, const redisReply *fields, bool claimed)
{
	const struct batch_loop *l = ((void **)ctx)[0];
	struct batch *b = ((void **)ctx)[1];
	const char *user, *why = NULL;
	size_t len;
	b->entries = xrealloc(b->entries, (b->nentries + 1) * b->entry_size);
	struct batch_entry *e = batch_entry_at(b, b->nentries++);
	memset(e, 0, b->entry_size);
	e->stream = stream;
	e->id = xstrdup(id);
	e->claimed = claimed;
	int rc = entry_user(fields, &user, &len, &why);
	if (user != NULL) {
		e->user = xstrndup(user, len);
		e->user_len = len;
	}
	l->ops->take(l->ctx, e, fields, rc < 0 ? why : NULL);
}

static void batch_free(const struct batch_loop *l, struct batch *b)
{
	if (l->ops->clear)
		l->ops->clear(b);
	for (size_t i = 0; i < b->nentries; i++) {
		free(batch_entry_at(b, i)->id);
		free(batch_entry_at(b, i)->user);
	}
	free(b->entries);
	for (size_t i = 0; i < b->nusers; i++)
		delivery_free(b->users[i]);
	free(b->users);
	memset(b, 0, sizeof(*b));
}

/* Whether any user of b is left pending: a retry, or not tried. */
static bool has_retry(const struct batch *b)
{
	for (size_t i = 0; i < b->nusers; i++)
		if (b->users[i]->outcome == OUTCOME_RETRY || b->users[i]->outcome == OUTCOME_DEFERRED)
			return true;
	return false;
}

/* Hands b to the owner, with the counters, and the backoff after it. */
static void process(struct batch_loop *l, struct batch *b)
{
	size_t claimed = 0;
	for (size_t i = 0; i < b->nentries; i++)
		claimed += batch_entry_at(b, i)->claimed;
	metrics_count(COUNT_PROCESSED, b->nentries);
	metrics_count(COUNT_RETRIED, claimed);
	int64_t started = clock_monotonic_us();
	if (l->ops->process(l->ctx, b) < 0)
		return;
	int64_t took = clock_monotonic_us() - started;
	metrics_batch_latency(took);
	log_debug("batch of %zu entries, %zu users, %zu taken over: %.1f ms", b->nentries, b->nusers, claimed,
		  (double)took / 1000.0);
	if (has_retry(b))
		consumer_sleep(l->q, consumer_backoff_ms(l->q, ++l->failing_batches));
	else
		l->failing_batches = 0;
}

/* One turn: a batch of taken-over entries if a look for them is due and
 * finds some, else of new entries, taken all the way. */
void batch_turn(struct batch_loop *l)
{
	struct batch b = { .entry_size = l->ops->entry_size };
	void *ctx[2] = { l, &b };
	int rc = consumer_read(l->q, take_entry, ctx);
	if (b.nentries > 0)
		process(l, &b);
	if (rc < 0 && b.nentries == 0)
		consumer_wait_outage(l->q, &l->failing_reads);
	else if (rc == 0)
		l->failing_reads = 0;
	batch_free(l, &b);
}
