/*
 * backfill.c - `cutover-migrate backfill`: walks the legacy collection in
 * _id order a page at a time (legacy_walk: string ids, then ObjectIds)
 * and puts every user the proxy has not seen yet on <p>:migrate with
 * reason backfill; with --direct it migrates them itself, through the
 * worker's own delivery path (worker_deliver). Keys: docs/design.md,
 * "Lazy migration".
 *
 * Each page ends with one script (advance_script): every user of the
 * page joins <p>:seen, those new to it go on the stream (the rule of the
 * proxy's first-seen script, so nobody is enqueued twice), and
 * <p>:backfill:cursor becomes the page's last _id - all of it or none,
 * so a kill -9 can never separate the cursor from the enqueues. The
 * cursor is the relaxed extended JSON of that _id ("u42", or
 * {"$oid":"..."}); a run resumes after it, --restart deletes it first.
 * <p>:backfill:total is the collection's estimated size at the start.
 *
 * --direct: the page is read whole; its users not in <p>:seen
 * (SMISMEMBER) go through the mapping, the sink and the Redis records as
 * in `run`. A user left for a retry is delivered again after the outage
 * backoff until it is delivered or dead-lettered (retry.attempts); only
 * then does the script add the page's users to <p>:seen and move the
 * cursor. A kill in between delivers the page again next time, which
 * the sink's version guard makes harmless.
 *
 * Ids: an _id that cannot be a user id (legacy_user_id: too long, not
 * UTF-8, control characters) is logged and counted as invalid, and the
 * cursor moves past it. ObjectIds are enqueued as 24 lowercase hex
 * digits, which legacy.id_type = objectid turns back into ObjectIds.
 * Extended JSON cannot hold a string that is not UTF-8, so a page whose
 * last _id is one ends at the last _id before it.
 *
 * Outages of legacy or Redis are logged and waited out (retry.backoff
 * doubled up to backoff_max); the cursor only moves in the script that
 * enqueues its page. --rate N is a token bucket of one page, filled at N
 * users a second from empty; a page then holds at most N documents. A
 * stop signal finishes the page in hand.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "migrator/migrator.h"

#define SCRIPT_ARGS 7 /* EVAL, script, numkeys, prefix, at, cursor, mode */
#define TTY_EVERY_US 100000
#define LOG_EVERY_US 5000000
#define BAR_WIDTH 30

/* ARGV: prefix, at (ms), cursor, 'enqueue' or 'record', user... Checks
 * the keys' types before the first write. Returns how many users were
 * new to <p>:seen. */
static const char advance_script[] =
	"local p, at, cursor, enqueue = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == 'enqueue'\n"
	"local seen, stream, ck = p .. ':seen', p .. ':migrate', p .. ':backfill:cursor'\n"
	"local function want(k, t)\n"
	"  local have = redis.call('TYPE', k).ok\n"
	"  if have ~= 'none' and have ~= t then error('key ' .. k .. ' holds a ' .. have .. ', not a ' .. t) end\n"
	"end\n"
	"want(seen, 'set'); want(stream, 'stream'); want(ck, 'string')\n"
	"local new = 0\n"
	"for i = 5, #ARGV do\n"
	"  if redis.call('SADD', seen, ARGV[i]) == 1 then\n"
	"    new = new + 1\n"
	"    if enqueue then redis.call('XADD', stream, '*', 'user', ARGV[i], 'reason', 'backfill', 'at', at) end\n"
	"  end\n"
	"end\n"
	"redis.call('SET', ck, cursor)\n"
	"return new\n";

struct backfill {
	const struct migrate_config *cfg;
	const struct backfill_options *opts;
	const volatile sig_atomic_t *stop;
	struct worker *w;
	char *seen_key;
	char *cursor_key;
	char *total_key;
	bool failed;                  /* stopped by an error (logged), not a signal */
	int limit;                    /* documents per page */
	bson_t *after;                /* {_id: the last _id walked}; NULL at the start */
	bson_t **docs;                /* the page in hand */
	size_t ndocs;
	char (*ids)[USER_ID_MAX + 1]; /* its users' ids */
	const char **argv;            /* a command about its users */
	size_t *argvlen;
	double tokens;                /* --rate: users that may go now */
	int64_t refilled_us;
	int64_t total;       /* documents in legacy, estimated */
	int64_t done_before; /* walked by earlier runs */
	int64_t walked;
	int64_t enqueued; /* or migrated, with --direct */
	int64_t skipped;  /* already in <p>:seen */
	int64_t invalid;
	int64_t dead;
	bool tty; /* stderr: the bar, not log lines */
	int64_t started_us;
	int64_t next_progress_us;
};

/* ---- the cursor ------------------------------------------------------- */

/* The relaxed extended JSON of doc's _id into out ("u42",
 * {"$oid":"..."}). Returns -1 for an _id it cannot hold. */
static int cursor_json(const bson_t *doc, struct buf *out)
{
	bson_iter_t it;
	uint32_t len;
	char hex[25];
	buf_reset(out);
	if (!bson_iter_init_find(&it, doc, "_id"))
		return -1;
	if (BSON_ITER_HOLDS_OID(&it)) {
		bson_oid_to_string(bson_iter_oid(&it), hex);
		buf_printf(out, "{\"$oid\":\"%s\"}", hex);
		return 0;
	}
	const char *s = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, &len) : NULL;
	if (s == NULL || !utf8_valid(s, len))
		return -1;
	json_put_string(out, s, len);
	return 0;
}

/* The stored cursor back into {_id: value}: a new document, or NULL
 * unless text is the JSON of a string or an ObjectId. */
static bson_t *cursor_parse(const char *text, size_t len)
{
	struct buf json;
	bson_error_t error;
	bson_iter_t it;
	buf_init(&json);
	buf_puts(&json, "{\"_id\":");
	buf_append(&json, text, len);
	buf_putc(&json, '}');
	bson_t *doc = bson_new_from_json((const uint8_t *)json.data, (ssize_t)json.len, &error);
	if (doc && !(bson_iter_init_find(&it, doc, "_id") && (BSON_ITER_HOLDS_UTF8(&it) || BSON_ITER_HOLDS_OID(&it)))) {
		bson_destroy(doc);
		doc = NULL;
	}
	buf_free(&json);
	return doc;
}

/* A new document {_id: doc's _id}. */
static bson_t *id_of(const bson_t *doc)
{
	bson_iter_t it;
	bson_t *id = bson_new();
	if (bson_iter_init_find(&it, doc, "_id"))
		bson_append_iter(id, "_id", 3, &it);
	return id;
}

/*
 * The page's cursor into out: the JSON of its last _id that JSON can
 * hold; documents after that one are dropped, to come first in the next
 * page. Returns -1 (logged) when no _id of the page can be held.
 */
static int page_cursor(struct backfill *bf, struct buf *out)
{
	while (bf->ndocs > 0 && cursor_json(bf->docs[bf->ndocs - 1], out) < 0)
		bson_destroy(bf->docs[--bf->ndocs]);
	if (bf->ndocs > 0)
		return 0;
	log_error("legacy: every _id of the next page is a string that is not UTF-8, which no cursor can hold: "
		  "the backfill cannot pass them");
	bf->failed = true;
	return -1;
}

/* ---- Redis -------------------------------------------------------------- */

/* The command argv[0..argc) with lengths (NULL: strlen), through the
 * worker: outages are waited out. Returns the reply (the caller frees
 * it), or NULL if stopped first. */
static redisReply *command(struct backfill *bf, int argc, const char **argv, const size_t *len)
{
	return consumer_command(worker_consumer(bf->w), argv[0], argc, argv, len);
}

/* Runs advance_script for users[0..n) and the page's cursor, mode
 * 'enqueue' or 'record'. Returns 0 with *fresh users new to <p>:seen,
 * or -1 if stopped before Redis answered. */
static int advance(struct backfill *bf, const char *mode, const char *const *users, size_t n, const char *cursor,
		   long long *fresh)
{
	char at[24];
	snprintf(at, sizeof(at), "%lld", (long long)(clock_realtime_us() / 1000));
	const char *head[SCRIPT_ARGS] = { "EVAL", advance_script, "0", bf->cfg->redis_prefix, at, cursor, mode };
	for (size_t i = 0; i < SCRIPT_ARGS + n; i++) {
		bf->argv[i] = i < SCRIPT_ARGS ? head[i] : users[i - SCRIPT_ARGS];
		bf->argvlen[i] = strlen(bf->argv[i]);
	}
	redisReply *r = command(bf, (int)(SCRIPT_ARGS + n), bf->argv, bf->argvlen);
	if (r == NULL)
		return -1;
	*fresh = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
	freeReplyObject(r);
	return 0;
}

/* ---- pages -------------------------------------------------------------- */

/* Logs an _id that cannot be a user id. */
static void log_invalid(const bson_t *doc, const char *why)
{
	bson_iter_t it;
	uint32_t len = 0;
	const char *s = "";
	char text[LOG_EXCERPT + 4];
	if (bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_UTF8(&it))
		s = bson_iter_utf8(&it, &len);
	user_excerpt(s, len, text);
	log_warn("legacy _id '%s' cannot be a user id (%s): skipped", text, why);
}

/* The user ids of the page into bf->ids, and pointers to the valid ones
 * into users (with their documents' index in at, unless NULL). Returns
 * how many are valid; the others are logged and counted. */
static size_t page_users(struct backfill *bf, const char **users, size_t *at)
{
	size_t n = 0;
	const char *why;
	for (size_t i = 0; i < bf->ndocs; i++) {
		if (legacy_user_id(bf->docs[i], bf->ids[i], &why) < 0) {
			log_invalid(bf->docs[i], why);
			bf->invalid++;
			continue;
		}
		if (at)
			at[n] = i;
		users[n++] = bf->ids[i];
	}
	return n;
}

/* Default mode: one script enqueues the page's new users and moves the
 * cursor. Returns -1 if stopped before it ran. */
static int enqueue_page(struct backfill *bf, const char *cursor)
{
	const char **users = xcalloc(bf->ndocs + 1, sizeof(*users));
	size_t n = page_users(bf, users, NULL);
	long long fresh;
	int rc = advance(bf, "enqueue", users, n, cursor, &fresh);
	if (rc == 0) {
		bf->enqueued += fresh;
		bf->skipped += (int64_t)n - fresh;
	}
	free(users);
	return rc;
}

/* Whether d is left for another delivery. */
static bool pending(const struct delivery *d)
{
	return d->outcome == OUTCOME_RETRY || d->outcome == OUTCOME_DEFERRED;
}

/* Delivers ds[0..n) until none is left for a retry, waiting the outage
 * backoff between rounds. Returns -1 if stopped first. */
static int deliver_all(struct backfill *bf, struct delivery **ds, size_t n)
{
	int rounds = 0;
	while (n > 0) {
		if (worker_deliver(bf->w, ds, n) < 0)
			return -1;
		size_t left = 0;
		for (size_t i = 0; i < n; i++) {
			if (!pending(ds[i]))
				continue;
			struct delivery *d = ds[i];
			delivery_again(d);
			ds[i] = ds[left];
			ds[left++] = d;
		}
		n = left;
		if (n > 0 && consumer_wait_outage(worker_consumer(bf->w), &rounds) < 0)
			return -1;
	}
	return 0;
}

/*
 * --direct: the page's users not yet in <p>:seen are delivered (their
 * documents move into their deliveries), then one script adds them to
 * <p>:seen and moves the cursor. Returns -1 if stopped first.
 */
static int migrate_page(struct backfill *bf, const char *cursor)
{
	const char **users = xcalloc(bf->ndocs + 1, sizeof(*users));
	size_t *at = xcalloc(bf->ndocs + 1, sizeof(*at));
	struct delivery **ds = xcalloc(bf->ndocs + 1, sizeof(*ds));
	size_t n = page_users(bf, users, at), nd = 0;
	long long fresh;
	int rc = -1;
	bf->argv[0] = "SMISMEMBER";
	bf->argv[1] = bf->seen_key;
	for (size_t i = 0; i < n; i++)
		bf->argv[2 + i] = users[i];
	redisReply *r = n > 0 ? command(bf, (int)(2 + n), bf->argv, NULL) : NULL;
	if (n > 0 && r == NULL)
		goto out;
	for (size_t i = 0; i < n; i++) {
		if (r->type == REDIS_REPLY_ARRAY && i < r->elements && r->element[i]->integer == 1) {
			bf->skipped++;
			continue;
		}
		struct delivery *d = xcalloc(1, sizeof(*d));
		d->user = xstrdup(users[i]);
		d->legacy = bf->docs[at[i]];
		bf->docs[at[i]] = NULL;
		users[nd] = d->user;
		ds[nd++] = d;
	}
	if (deliver_all(bf, ds, nd) < 0 || advance(bf, "record", users, nd, cursor, &fresh) < 0)
		goto out;
	for (size_t i = 0; i < nd; i++) {
		bf->enqueued += ds[i]->outcome == OUTCOME_DELIVERED;
		bf->dead += ds[i]->outcome == OUTCOME_DEAD;
	}
	rc = 0;
out:
	if (r)
		freeReplyObject(r);
	for (size_t i = 0; i < nd; i++)
		delivery_free(ds[i]);
	free(ds);
	free(users);
	free(at);
	return rc;
}

/* ---- pace and progress ------------------------------------------------ */

/* Waits until the bucket holds n tokens, and takes them. Returns -1 if
 * stopped meanwhile. */
static int take_tokens(struct backfill *bf, size_t n)
{
	int rate = bf->opts->rate;
	while (rate > 0) {
		int64_t now = clock_monotonic_us();
		bf->tokens += (double)(now - bf->refilled_us) * rate / 1e6;
		bf->tokens = bf->tokens < bf->limit ? bf->tokens : bf->limit;
		bf->refilled_us = now;
		if (bf->tokens >= (double)n) {
			bf->tokens -= (double)n;
			break;
		}
		if (*bf->stop)
			return -1;
		consumer_sleep(worker_consumer(bf->w), (int)(((double)n - bf->tokens) * 1000 / rate) + 1);
	}
	return 0;
}

/* The time left for left users at rate a second, as H:MM:SS, or "?"
 * before there is a rate. */
static void format_eta(int64_t left, double rate, char *out, size_t outlen)
{
	if (rate <= 0) {
		snprintf(out, outlen, "?");
		return;
	}
	long s = (long)((double)left / rate + 0.5);
	snprintf(out, outlen, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
}

/* On a terminal, the bar redrawn in place (at most 10 times a second);
 * elsewhere a log line every 5 s. final: the bar now, and kept; no log
 * line (the summary follows). */
static void show_progress(struct backfill *bf, bool final)
{
	int64_t now = clock_monotonic_us();
	if (!final && now < bf->next_progress_us)
		return;
	bf->next_progress_us = now + (bf->tty ? TTY_EVERY_US : LOG_EVERY_US);
	int64_t done = bf->done_before + bf->walked;
	int64_t total = bf->total > done ? bf->total : done;
	double rate = now > bf->started_us ? (double)bf->walked * 1e6 / (double)(now - bf->started_us) : 0;
	double percent = total > 0 ? 100.0 * (double)done / (double)total : 100.0;
	char eta[32], bar[BAR_WIDTH + 1];
	format_eta(total - done, rate, eta, sizeof(eta));
	if (bf->tty) {
		int full = (int)(percent * BAR_WIDTH / 100);
		for (int i = 0; i < BAR_WIDTH; i++)
			bar[i] = i < full ? '#' : '.';
		bar[BAR_WIDTH] = '\0';
		/* The cursor is left at the start of the line: a log line
		 * overwrites the bar, and the next one is drawn below it. */
		fprintf(stderr, "[%s] %lld/%lld %5.1f%% %.0f/s ETA %s\033[K%s", bar, (long long)done, (long long)total,
			percent, rate, eta, final ? "\n" : "\r");
	} else if (!final) {
		log_info("backfill: %lld of %lld users (%.1f%%), %.0f/s, ETA %s", (long long)done, (long long)total,
			 percent, rate, eta);
	}
}

/* ---- the walk ------------------------------------------------------------- */

/* The next page into bf->docs, waiting out legacy outages. Returns -1 if
 * stopped meanwhile. */
static int read_page(struct backfill *bf)
{
	char err[MIGRATE_ERR_MAX];
	int outages = 0;
	while (legacy_walk(worker_legacy(bf->w), bf->after, bf->limit, bf->opts->direct, bf->docs, &bf->ndocs, err,
			   sizeof(err)) < 0) {
		log_warn("legacy: %s; the backfill waits", err);
		if (consumer_wait_outage(worker_consumer(bf->w), &outages) < 0)
			return -1;
	}
	return 0;
}

/* Reads, paces and takes the next page. Returns 1 after a page, 0 once
 * the walk is over, -1 to stop (a signal, or bf->failed). */
static int next_page(struct backfill *bf)
{
	struct buf cursor;
	bson_t *last = NULL;
	int rc = -1;
	buf_init(&cursor);
	if (read_page(bf) < 0)
		goto out;
	if (bf->ndocs == 0) {
		rc = 0;
		goto out;
	}
	if (page_cursor(bf, &cursor) < 0 || take_tokens(bf, bf->ndocs) < 0)
		goto out;
	last = id_of(bf->docs[bf->ndocs - 1]);
	if ((bf->opts->direct ? migrate_page(bf, cursor.data) : enqueue_page(bf, cursor.data)) < 0)
		goto out;
	bf->walked += (int64_t)bf->ndocs;
	bson_destroy(bf->after);
	bf->after = last;
	last = NULL;
	show_progress(bf, false);
	rc = 1;
out:
	while (bf->ndocs > 0)
		bson_destroy(bf->docs[--bf->ndocs]);
	bson_destroy(last);
	buf_free(&cursor);
	return rc;
}

/* The stored cursor into bf->after (--restart deletes it first). Returns
 * -1 if stopped, or if it is not one (logged, bf->failed). */
static int load_cursor(struct backfill *bf)
{
	const char *del[] = { "DEL", bf->cursor_key }, *get[] = { "GET", bf->cursor_key };
	redisReply *r;
	if (bf->opts->restart) {
		if ((r = command(bf, 2, del, NULL)) == NULL)
			return -1;
		freeReplyObject(r);
	}
	if ((r = command(bf, 2, get, NULL)) == NULL)
		return -1;
	if (r->type == REDIS_REPLY_STRING && (bf->after = cursor_parse(r->str, r->len)) == NULL) {
		log_error("%s is not a backfill cursor (the extended JSON of a string or an ObjectId): '%.100s'; "
			  "fix it, or start again with --restart",
			  bf->cursor_key, r->str);
		bf->failed = true;
	}
	freeReplyObject(r);
	return bf->failed ? -1 : 0;
}

/* The cursor, the counts for progress (<p>:backfill:total), waiting
 * out outages. Returns -1 if stopped, or on a failure (logged). */
static int start(struct backfill *bf)
{
	char err[MIGRATE_ERR_MAX], total[24];
	struct buf where;
	int outages = 0;
	if (load_cursor(bf) < 0)
		return -1;
	while (legacy_count(worker_legacy(bf->w), bf->after, &bf->total, &bf->done_before, err, sizeof(err)) < 0) {
		log_warn("legacy: %s; the backfill waits", err);
		if (consumer_wait_outage(worker_consumer(bf->w), &outages) < 0)
			return -1;
	}
	snprintf(total, sizeof(total), "%lld", (long long)bf->total);
	const char *set[] = { "SET", bf->total_key, total };
	redisReply *r = command(bf, 3, set, NULL);
	if (r == NULL)
		return -1;
	freeReplyObject(r);
	if (bf->after) {
		buf_init(&where);
		cursor_json(bf->after, &where);
		log_info("backfill of %s.%s resumes after _id %s: %lld of about %lld users done", bf->cfg->legacy.database,
			 bf->cfg->legacy.collection, where.data, (long long)bf->done_before, (long long)bf->total);
		buf_free(&where);
	} else {
		log_info("backfill of %s.%s from the start: about %lld users", bf->cfg->legacy.database,
			 bf->cfg->legacy.collection, (long long)bf->total);
	}
	log_info("%s, %d documents a page, %s", bf->opts->direct ? "migrating directly" : "enqueuing", bf->limit,
		 bf->opts->rate ? "rate-limited" : "no rate limit");
	return 0;
}

/* The final line: what this run did. */
static void summary(const struct backfill *bf, bool over)
{
	char dead[48] = "";
	double elapsed = (double)(clock_monotonic_us() - bf->started_us) / 1e6;
	if (bf->opts->direct)
		snprintf(dead, sizeof(dead), " (%lld dead-lettered)", (long long)bf->dead);
	log_info("backfill %s: %lld %s%s, %lld skipped (already seen), %lld invalid; %lld of %lld users walked in "
		 "%.1f s",
		 over ? "done" : bf->failed ? "failed" : "stopped, run it again to resume", (long long)bf->enqueued,
		 bf->opts->direct ? "migrated" : "enqueued", dead, (long long)bf->skipped, (long long)bf->invalid,
		 (long long)(bf->done_before + bf->walked), (long long)bf->total, elapsed);
}

/* Keys, and room for one page. */
static void backfill_init(struct backfill *bf)
{
	struct buf k;
	const char *p = bf->cfg->redis_prefix;
	buf_init(&k);
	buf_printf(&k, "%s:seen", p);
	bf->seen_key = buf_detach(&k);
	buf_printf(&k, "%s:backfill:cursor", p);
	bf->cursor_key = buf_detach(&k);
	buf_printf(&k, "%s:backfill:total", p);
	bf->total_key = buf_detach(&k);
	bf->limit = bf->opts->rate > 0 && bf->opts->rate < bf->opts->batch ? bf->opts->rate : bf->opts->batch;
	bf->docs = xcalloc((size_t)bf->limit, sizeof(*bf->docs));
	bf->ids = xcalloc((size_t)bf->limit, sizeof(*bf->ids));
	bf->argv = xcalloc((size_t)bf->limit + SCRIPT_ARGS, sizeof(*bf->argv));
	bf->argvlen = xcalloc((size_t)bf->limit + SCRIPT_ARGS, sizeof(*bf->argvlen));
	bf->tty = isatty(STDERR_FILENO);
}

static void backfill_free(struct backfill *bf)
{
	worker_free(bf->w);
	free(bf->seen_key);
	free(bf->cursor_key);
	free(bf->total_key);
	bson_destroy(bf->after);
	free(bf->docs);
	free(bf->ids);
	free(bf->argv);
	free(bf->argvlen);
}

/*
 * Walks legacy from the stored cursor to the end, or until *stop is set
 * (the page in hand is finished). Returns 0 then; 1 when it cannot start
 * or the cursor is not one (logged).
 */
int backfill_run(const struct migrate_config *cfg, const struct backfill_options *opts,
		 const volatile sig_atomic_t *stop)
{
	struct backfill bf = { .cfg = cfg, .opts = opts, .stop = stop };
	char err[MIGRATE_ERR_MAX];
	int more = -1;
	backfill_init(&bf);
	bf.w = worker_new(cfg, stop, err, sizeof(err));
	if (bf.w == NULL) {
		log_error("%s", err);
		bf.failed = true;
		goto out;
	}
	if (start(&bf) < 0) {
		log_info("backfill %s before its first page", bf.failed ? "failed" : "stopped");
		goto out;
	}
	bf.started_us = bf.refilled_us = clock_monotonic_us();
	do
		more = next_page(&bf);
	while (more > 0 && !*stop);
	show_progress(&bf, true);
	summary(&bf, more == 0);
out:
	backfill_free(&bf);
	return bf.failed ? 1 : 0;
}
