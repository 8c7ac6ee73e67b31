/*
 * ctl_stream.c - Redis streams as cutoverctl reports on them: how far a
 * consumer group is behind on its stream (`migrators` on the migrate
 * streams, `syncback` on the users service's events stream), and
 * sync-back's side of a kill or rollback: how far legacy may be behind
 * the service, and waiting until it has caught up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "flags/ctl.h"

#define SYNCBACK_GROUP "syncback"
#define PAGE 1000             /* entries per XRANGE/XPENDING when counting */
#define WAIT_POLL_US 100000   /* how often --wait-synced looks */
#define WAIT_REPORT_US 1000000 /* how often it says so on stderr */
#define WAIT_SHOW 5           /* pending entries named on a timeout */

/* ---------------------------------------------------------- commands */

/*
 * Runs one command (hiredis format) and checks the reply; on failure
 * prints the reason, sets *rc to the exit code and returns NULL. The
 * caller frees a non-NULL reply.
 */
redisReply *ctl_command(struct flag_store *st, int *rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(flag_store_redis(st), fmt, ap);
	va_end(ap);
	char err[512];
	int status = flag_store_reply_status(st, r, err, sizeof(err));
	if (status != STORE_OK) {
		*rc = ctl_fail(status, err);
		if (r)
			freeReplyObject(r);
		return NULL;
	}
	return r;
}

/* An integer reply, or a number sent as a string (XPENDING's counts). */
long long ctl_reply_int(const redisReply *r)
{
	return r->type == REDIS_REPLY_INTEGER ? r->integer : r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
}

/* The value of field name in a flat field/value array (an XINFO map or
 * a stream entry's fields), or NULL. Borrowed from the reply. */
static const redisReply *map_get(const redisReply *map, const char *name)
{
	for (size_t k = 0; map->type == REDIS_REPLY_ARRAY && k + 1 < map->elements; k += 2)
		if (map->element[k]->type == REDIS_REPLY_STRING && strcmp(map->element[k]->str, name) == 0)
			return map->element[k + 1];
	return NULL;
}

/* The field called name of a stream entry ([id, [field, value, ...]]),
 * any bytes, or NULL. Borrowed from the reply. */
const redisReply *ctl_entry_field(const redisReply *entry, const char *name)
{
	return map_get(entry->element[1], name);
}

/* ----------------------------------------------------------- stream ids */

static void id_split(const char *id, unsigned long long *ms, unsigned long long *seq)
{
	char *end;
	*ms = strtoull(id, &end, 10);
	*seq = *end == '-' ? strtoull(end + 1, NULL, 10) : 0;
}

/* Compares two stream ids ("ms-seq") as Redis orders them, like strcmp. */
static int id_cmp(const char *a, const char *b)
{
	unsigned long long ams, aseq, bms, bseq;
	id_split(a, &ams, &aseq);
	id_split(b, &bms, &bseq);
	if (ams != bms)
		return ams < bms ? -1 : 1;
	return aseq < bseq ? -1 : aseq > bseq;
}

static void id_copy(char *dst, const char *src)
{
	snprintf(dst, CTL_STREAM_ID_MAX, "%s", src);
}

/*
 * Redis's clock in ms. Entry ids are stamped with it, so an entry's age
 * measured against it holds even when this host's clock is off.
 */
static int redis_now_ms(struct flag_store *st, long long *ms)
{
	int rc = CTL_EXIT_OK;
	redisReply *r = ctl_command(st, &rc, "TIME");
	if (r == NULL)
		return rc;
	*ms = r->elements == 2 ? atoll(r->element[0]->str) * 1000 + atoll(r->element[1]->str) / 1000 : 0;
	freeReplyObject(r);
	return CTL_EXIT_OK;
}

/*
 * Counts the ids in (after, upto] that XRANGE key lists or, with a group,
 * that XPENDING key group lists (delivered and not acknowledged), a page
 * at a time. For rare paths only: XRANGE pages carry the entries.
 */
static int count_ids(struct flag_store *st, const char *key, const char *group, const char *after, const char *upto,
		     long long *n)
{
	char from[CTL_STREAM_ID_MAX + 1];
	snprintf(from, sizeof(from), "(%s", after);
	*n = 0;
	for (;;) {
		int rc = CTL_EXIT_OK;
		redisReply *r = group ? ctl_command(st, &rc, "XPENDING %s %s %s %s %d", key, group, from, upto, PAGE)
				      : ctl_command(st, &rc, "XRANGE %s %s %s COUNT %d", key, from, upto, PAGE);
		if (r == NULL)
			return rc;
		size_t got = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
		*n += (long long)got;
		if (got == PAGE)
			snprintf(from, sizeof(from), "(%s", r->element[got - 1]->element[0]->str);
		freeReplyObject(r);
		if (got < PAGE)
			return CTL_EXIT_OK;
	}
}

/* ------------------------------------------------------ a group's lag */

/* The XINFO GROUPS entry of group, or NULL. Borrowed from groups. */
static const redisReply *find_group(const redisReply *groups, const char *group)
{
	for (size_t g = 0; groups->type == REDIS_REPLY_ARRAY && g < groups->elements; g++) {
		const redisReply *name = map_get(groups->element[g], "name");
		if (name && name->type == REDIS_REPLY_STRING && strcmp(name->str, group) == 0)
			return groups->element[g];
	}
	return NULL;
}

/* What XINFO GROUPS says of one group. */
struct group_info {
	bool found;
	long long pending;
	long long lag; /* not yet delivered; -1 when Redis cannot tell */
	char last_delivered[CTL_STREAM_ID_MAX];
};

static int read_group(struct flag_store *st, const char *key, const char *group, struct group_info *gi)
{
	int rc = CTL_EXIT_OK;
	redisReply *r = ctl_command(st, &rc, "XINFO GROUPS %s", key);
	if (r == NULL)
		return rc;
	const redisReply *info = find_group(r, group);
	const redisReply *pending = info ? map_get(info, "pending") : NULL;
	const redisReply *lag = info ? map_get(info, "lag") : NULL;
	const redisReply *last = info ? map_get(info, "last-delivered-id") : NULL;
	gi->found = info != NULL;
	gi->pending = pending ? ctl_reply_int(pending) : 0;
	gi->lag = lag && lag->type == REDIS_REPLY_INTEGER ? lag->integer : -1;
	id_copy(gi->last_delivered, last && last->type == REDIS_REPLY_STRING ? last->str : "0-0");
	freeReplyObject(r);
	return CTL_EXIT_OK;
}

/*
 * pending, and unread: Redis 7's lag, or counted when Redis cannot tell
 * (an older Redis, or entries deleted in the middle of the stream). With
 * no group every entry is unread. Acknowledged entries stay in a stream,
 * so its length alone says nothing about the work left.
 */
static int read_counts(struct flag_store *st, const char *key, const char *group, struct ctl_stream_lag *out)
{
	struct group_info gi;
	int rc = read_group(st, key, group, &gi);
	if (rc != CTL_EXIT_OK)
		return rc;
	out->grouped = gi.found;
	out->pending = gi.pending;
	id_copy(out->last_delivered, gi.last_delivered);
	if (gi.found && gi.lag >= 0) {
		out->unread = gi.lag;
		return CTL_EXIT_OK;
	}
	return count_ids(st, key, NULL, out->last_delivered, "+", &out->unread);
}

/* Each consumer of the group: its pending entries and idle time. */
static int read_consumers(struct flag_store *st, const char *key, const char *group, struct ctl_stream_lag *out)
{
	int rc = CTL_EXIT_OK;
	redisReply *r = ctl_command(st, &rc, "XINFO CONSUMERS %s %s", key, group);
	if (r == NULL)
		return rc;
	out->consumers = xcalloc(r->elements + 1, sizeof(*out->consumers));
	for (size_t i = 0; i < r->elements; i++) {
		const redisReply *name = map_get(r->element[i], "name");
		const redisReply *pending = map_get(r->element[i], "pending"), *idle = map_get(r->element[i], "idle");
		if (name == NULL || name->type != REDIS_REPLY_STRING)
			continue;
		struct ctl_stream_consumer *c = &out->consumers[out->nconsumers++];
		c->name = xstrndup(name->str, name->len);
		c->pending = pending ? ctl_reply_int(pending) : 0;
		c->idle_ms = idle ? ctl_reply_int(idle) : 0;
	}
	freeReplyObject(r);
	return CTL_EXIT_OK;
}

/*
 * The age of the oldest entry not yet acknowledged: the oldest pending
 * one (the smallest id XPENDING knows, even if trimmed off the stream
 * since), else the first one after the group's last-delivered-id.
 */
static int read_oldest(struct flag_store *st, const char *key, const char *group, struct ctl_stream_lag *out)
{
	int rc = CTL_EXIT_OK;
	redisReply *r = out->pending > 0 ? ctl_command(st, &rc, "XPENDING %s %s", key, group)
					 : ctl_command(st, &rc, "XRANGE %s (%s + COUNT 1", key, out->last_delivered);
	if (r == NULL)
		return rc;
	const redisReply *id = NULL;
	if (out->pending > 0 && r->elements >= 2 && r->element[1]->type == REDIS_REPLY_STRING)
		id = r->element[1];
	else if (out->pending == 0 && r->elements == 1)
		id = r->element[0]->element[0];
	long long now = 0;
	if (id && (rc = redis_now_ms(st, &now)) == CTL_EXIT_OK) {
		double age = (now - atoll(id->str)) / 1000.0;
		out->oldest_s = age > 0 ? age : 0;
	}
	freeReplyObject(r);
	return rc;
}

/*
 * Whether the stream key exists (*exists); a key of another type is an
 * error, printed, CTL_EXIT_INVALID. Returns an exit code.
 */
int ctl_stream_exists(struct flag_store *st, const char *key, bool *exists)
{
	int rc = CTL_EXIT_OK;
	redisReply *r = ctl_command(st, &rc, "TYPE %s", key);
	if (r == NULL)
		return rc;
	*exists = strcmp(r->str, "none") != 0;
	if (*exists && strcmp(r->str, "stream") != 0) {
		fprintf(stderr, "cutoverctl: %s is a %s, not a stream\n", key, r->str);
		rc = CTL_EXIT_INVALID;
	}
	freeReplyObject(r);
	return rc;
}

/*
 * Reads how far group is behind on the stream key into *out (freed with
 * ctl_stream_lag_free, also after an error). A stream that does not
 * exist has no lag (exists false); a key of another type is an error.
 * Returns an exit code; errors are printed.
 */
int ctl_stream_lag_read(struct flag_store *st, const char *key, const char *group, struct ctl_stream_lag *out)
{
	memset(out, 0, sizeof(*out));
	id_copy(out->last_delivered, "0-0");
	int rc = ctl_stream_exists(st, key, &out->exists);
	if (rc != CTL_EXIT_OK || !out->exists)
		return rc;
	rc = read_counts(st, key, group, out);
	if (rc == CTL_EXIT_OK && out->grouped)
		rc = read_consumers(st, key, group, out);
	return rc == CTL_EXIT_OK ? read_oldest(st, key, group, out) : rc;
}

void ctl_stream_lag_free(struct ctl_stream_lag *l)
{
	for (size_t i = 0; i < l->nconsumers; i++)
		free(l->consumers[i].name);
	free(l->consumers);
	l->consumers = NULL;
	l->nconsumers = 0;
}

/* ------------------------------------------------------------ sync-back */

/* Marks the last entry of the events stream and of the dead-letter
 * stream in one step, so that "dead-lettered since" and "up to the
 * change" refer to the same moment. "0-0" for an empty stream. */
static const char mark_script[] =
	"local function last(key)\n"
	"  local e = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)\n"
	"  return e[1] and e[1][1] or '0-0'\n"
	"end\n"
	"return {last(KEYS[1]), last(KEYS[2])}\n";

/* The events stream's key (--events, else <prefix>:service:events) and
 * the dead-letter stream's, into stream and dead (reset first). */
void ctl_syncback_keys(const struct ctl *ctl, struct flag_store *st, struct buf *stream, struct buf *dead)
{
	if (ctl->events) {
		buf_reset(stream);
		buf_puts(stream, ctl->events);
	} else {
		flag_store_key(flag_store_prefix(st), "service:events", stream);
	}
	flag_store_key(flag_store_prefix(st), "syncback:dead", dead);
}

/*
 * Reads sync-back's state into *sb: the events stream (--events, else
 * <prefix>:service:events), its `syncback` group's lag, and the size of
 * <prefix>:syncback:dead. With mark, first notes the last entry of both
 * streams for ctl_syncback_wait. The caller frees *sb with
 * ctl_syncback_free, also after an error. Returns an exit code.
 */
int ctl_syncback_read(struct ctl *ctl, struct flag_store *st, bool mark, struct ctl_syncback *sb)
{
	memset(sb, 0, sizeof(*sb));
	buf_init(&sb->stream);
	buf_init(&sb->dead_stream);
	ctl_syncback_keys(ctl, st, &sb->stream, &sb->dead_stream);
	id_copy(sb->mark, "0-0");
	id_copy(sb->dead_mark, "0-0");
	int rc = CTL_EXIT_OK;
	if (mark) {
		redisReply *r = ctl_command(st, &rc, "EVAL %s 2 %s %s", mark_script, sb->stream.data,
					    sb->dead_stream.data);
		if (r == NULL)
			return rc;
		if (r->elements == 2) {
			id_copy(sb->mark, r->element[0]->str);
			id_copy(sb->dead_mark, r->element[1]->str);
		}
		freeReplyObject(r);
	}
	rc = ctl_stream_lag_read(st, sb->stream.data, SYNCBACK_GROUP, &sb->lag);
	if (rc != CTL_EXIT_OK)
		return rc;
	redisReply *r = ctl_command(st, &rc, "XLEN %s", sb->dead_stream.data);
	if (r == NULL)
		return rc;
	sb->dead = ctl_reply_int(r);
	freeReplyObject(r);
	return CTL_EXIT_OK;
}

void ctl_syncback_free(struct ctl_syncback *sb)
{
	buf_free(&sb->stream);
	buf_free(&sb->dead_stream);
	ctl_stream_lag_free(&sb->lag);
}

/*
 * The one line a kill or rollback prints about sync-back, without a
 * newline; nothing when the events stream does not exist (sync-back is
 * not in use).
 */
void ctl_syncback_line(const struct ctl_syncback *sb, struct buf *out)
{
	const struct ctl_stream_lag *l = &sb->lag;
	long long behind = l->pending + l->unread;
	if (!l->exists)
		return;
	if (!l->grouped)
		buf_printf(out, "sync-back: no consumer group \"%s\" on %s", SYNCBACK_GROUP, sb->stream.data);
	else if (behind == 0 && sb->dead == 0)
		buf_puts(out, "sync-back: legacy is up to date");
	else if (behind == 0)
		buf_printf(out, "sync-back: legacy is up to date but for %lld dead-lettered events, which never reached it "
			   "(%s)", sb->dead, sb->dead_stream.data);
	else
		buf_printf(out, "sync-back: legacy may be up to %lld events / %.1f s behind (%lld pending, %lld not yet "
			   "read; %lld dead-lettered)", behind, l->oldest_s, l->pending, l->unread, sb->dead);
}

/* The same as a JSON object, or null when sync-back is not in use. */
void ctl_syncback_json(const struct ctl_syncback *sb, struct buf *out)
{
	const struct ctl_stream_lag *l = &sb->lag;
	if (!l->exists) {
		buf_puts(out, "null");
		return;
	}
	buf_puts(out, "{\"stream\":");
	json_put_string(out, sb->stream.data, sb->stream.len);
	buf_printf(out, ",\"group\":\"%s\",\"state\":\"%s\",\"pending\":%lld,\"unread\":%lld,\"behind\":%lld,"
		   "\"oldest_unacked_s\":%.3f,\"dead\":%lld,\"dead_stream\":",
		   SYNCBACK_GROUP, !l->grouped ? "no-group" : l->pending + l->unread ? "behind" : "up-to-date",
		   l->pending, l->unread, l->pending + l->unread, l->oldest_s, sb->dead);
	json_put_string(out, sb->dead_stream.data, sb->dead_stream.len);
	buf_puts(out, ",\"consumers\":[");
	for (size_t i = 0; i < l->nconsumers; i++) {
		buf_puts(out, i ? ",{\"name\":" : "{\"name\":");
		json_put_string(out, l->consumers[i].name, strlen(l->consumers[i].name));
		buf_printf(out, ",\"pending\":%lld,\"idle_ms\":%lld}", l->consumers[i].pending, l->consumers[i].idle_ms);
	}
	buf_puts(out, "]}");
}

/* The sync-back section of `migration status` (text, ending in a
 * newline), in the layout of the migrate streams' lines above it. */
void ctl_syncback_section(const struct ctl_syncback *sb, struct buf *out)
{
	const struct ctl_stream_lag *l = &sb->lag;
	if (!l->exists) {
		buf_printf(out, "%-11s not in use (no stream %s)\n", "sync-back", sb->stream.data);
		return;
	}
	if (!l->grouped)
		buf_printf(out, "%-11s no consumer group \"%s\" on %s\n", "sync-back", SYNCBACK_GROUP, sb->stream.data);
	else
		buf_printf(out, "%-11s %s, group %s\n  %-11s %lld\n  %-11s %lld\n  %-11s %.3f s\n", "sync-back",
			   sb->stream.data, SYNCBACK_GROUP, "pending", l->pending, "not read", l->unread, "oldest lag",
			   l->oldest_s);
	buf_printf(out, "  %-11s %lld (%s)\n", "dead", sb->dead, sb->dead_stream.data);
	if (!l->grouped)
		return;
	buf_printf(out, "  %-11s", "consumers");
	for (size_t i = 0; i < l->nconsumers; i++)
		buf_printf(out, "%s%s=%lld (idle %.1f s)", i ? ", " : " ", l->consumers[i].name, l->consumers[i].pending,
			   l->consumers[i].idle_ms / 1000.0);
	buf_puts(out, l->nconsumers ? "\n" : " none\n");
}

/* --------------------------------------------------------- --wait-synced */

/* Whether the group has acknowledged every entry up to and including
 * upto: it has read past it, and nothing at or before it is pending. A
 * group that disappears ends the wait (CTL_EXIT_NOT_SYNCED). */
static int caught_up(struct flag_store *st, const struct ctl_syncback *sb, bool *done)
{
	struct group_info gi;
	int rc = read_group(st, sb->stream.data, SYNCBACK_GROUP, &gi);
	if (rc != CTL_EXIT_OK)
		return rc;
	if (!gi.found) {
		fprintf(stderr, "cutoverctl: the consumer group \"%s\" on %s went away while waiting\n", SYNCBACK_GROUP,
			sb->stream.data);
		return CTL_EXIT_NOT_SYNCED;
	}
	*done = false;
	if (id_cmp(gi.last_delivered, sb->mark) < 0)
		return CTL_EXIT_OK;
	redisReply *r = ctl_command(st, &rc, "XPENDING %s %s - %s 1", sb->stream.data, SYNCBACK_GROUP, sb->mark);
	if (r == NULL)
		return rc;
	*done = r->elements == 0;
	freeReplyObject(r);
	return CTL_EXIT_OK;
}

static void progress(struct flag_store *st, const struct ctl_syncback *sb, double waited, double timeout_s)
{
	struct ctl_stream_lag now;
	if (ctl_stream_lag_read(st, sb->stream.data, SYNCBACK_GROUP, &now) == CTL_EXIT_OK)
		fprintf(stderr, "cutoverctl: waiting for sync-back to apply the events up to %s: the group has %lld "
			"pending, %lld not yet read (%.0f s of %g s)\n", sb->mark, now.pending, now.unread, waited,
			timeout_s);
	ctl_stream_lag_free(&now);
}

static void sleep_us(long long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	nanosleep(&ts, NULL);
}

/* Names what is still pending at or before the mark, on stderr, and
 * counts what is left into *pending and *unread. */
static int report_left(struct flag_store *st, const struct ctl_syncback *sb, long long *pending, long long *unread)
{
	struct group_info gi;
	const char *key = sb->stream.data;
	int rc = read_group(st, key, SYNCBACK_GROUP, &gi);
	if (rc == CTL_EXIT_OK)
		rc = count_ids(st, key, SYNCBACK_GROUP, "0-0", sb->mark, pending);
	*unread = 0;
	if (rc == CTL_EXIT_OK && id_cmp(gi.last_delivered, sb->mark) < 0)
		rc = count_ids(st, key, NULL, gi.last_delivered, sb->mark, unread);
	redisReply *r = rc == CTL_EXIT_OK ? ctl_command(st, &rc, "XPENDING %s %s - %s %d", key, SYNCBACK_GROUP,
							 sb->mark, WAIT_SHOW)
					  : NULL;
	if (r == NULL)
		return rc;
	fprintf(stderr, "cutoverctl: still not applied to legacy: %lld delivered but not acknowledged, %lld not yet read "
		"by any consumer\n", *pending, *unread);
	for (size_t i = 0; i < r->elements; i++) {
		const redisReply *p = r->element[i];
		redisReply *e = redisCommand(flag_store_redis(st), "XRANGE %s %s %s", key, p->element[0]->str,
					     p->element[0]->str);
		const redisReply *user = e && e->type == REDIS_REPLY_ARRAY && e->elements == 1
						 ? ctl_entry_field(e->element[0], "user")
						 : NULL;
		fprintf(stderr, "cutoverctl:   %s user %s: consumer %s, idle %.1f s, %lld deliveries\n",
			p->element[0]->str, user ? user->str : "?", p->element[1]->str,
			ctl_reply_int(p->element[2]) / 1000.0, ctl_reply_int(p->element[3]));
		if (e)
			freeReplyObject(e);
	}
	if (*pending > (long long)r->elements)
		fprintf(stderr, "cutoverctl:   and %lld more pending\n", *pending - (long long)r->elements);
	freeReplyObject(r);
	return CTL_EXIT_OK;
}

/* The dead-letter entries added since the mark: events sync-back gave
 * up on, whose changes are not in legacy. Said loudly on stderr, and
 * as a JSON array into json. */
static int report_dead(struct flag_store *st, const struct ctl_syncback *sb, long long *n, struct buf *json)
{
	int rc = CTL_EXIT_OK;
	redisReply *r = ctl_command(st, &rc, "XRANGE %s (%s +", sb->dead_stream.data, sb->dead_mark);
	if (r == NULL)
		return rc;
	*n = (long long)r->elements;
	if (*n)
		fprintf(stderr, "cutoverctl: WARNING: %lld events were dead-lettered while waiting: these changes did "
			"NOT reach legacy:\n", *n);
	static const char *const fields[] = { "entry", "user", "type", "version", "reason", "error", "attempts", "at" };
	buf_putc(json, '[');
	for (size_t i = 0; i < r->elements; i++) {
		const redisReply *v[8];
		buf_puts(json, i ? ",{" : "{");
		for (size_t f = 0; f < 8; f++) {
			v[f] = ctl_entry_field(r->element[i], fields[f]);
			buf_printf(json, "%s\"%s\":", f ? "," : "", fields[f]);
			json_put_string(json, v[f] ? v[f]->str : "", v[f] ? v[f]->len : 0);
		}
		buf_putc(json, '}');
		fprintf(stderr, "cutoverctl:   event %s user %s %s version %s: %s after %s attempts: %s\n",
			v[0] ? v[0]->str : "?", v[1] ? v[1]->str : "?", v[2] ? v[2]->str : "?", v[3] ? v[3]->str : "?",
			v[4] ? v[4]->str : "?", v[6] ? v[6]->str : "?", v[5] ? v[5]->str : "");
	}
	buf_putc(json, ']');
	if (*n)
		fprintf(stderr, "cutoverctl: they are in %s; put these users right in legacy by hand\n",
			sb->dead_stream.data);
	freeReplyObject(r);
	return CTL_EXIT_OK;
}

/*
 * --wait-synced: waits, polling every 100 ms for at most timeout_s, until
 * the `syncback` group has acknowledged every event up to the mark taken
 * by ctl_syncback_read, saying how it goes on stderr once a second. Then
 * prints how long it took and what was dead-lettered meanwhile. Returns
 * CTL_EXIT_OK, CTL_EXIT_NOT_SYNCED (no group, or timed out: names what is
 * left), CTL_EXIT_DEAD_LETTERED, or the exit code of a Redis error.
 */
int ctl_syncback_wait(struct ctl *ctl, struct flag_store *st, const struct ctl_syncback *sb, double timeout_s)
{
	if (!sb->lag.exists || !sb->lag.grouped) {
		fprintf(stderr, "cutoverctl: --wait-synced: %s %s: nothing applies the service's changes to legacy, so "
			"there is nothing to wait for\n", sb->lag.exists ? "no consumer group \"" SYNCBACK_GROUP "\" on"
			: "no stream", sb->stream.data);
		return CTL_EXIT_NOT_SYNCED;
	}
	/* The change and sync-back's state are out before the wait, also
	 * through a pipe (| tee). */
	fflush(stdout);
	int64_t start = clock_monotonic_us(), deadline = start + (int64_t)(timeout_s * 1e6), said = start;
	bool done = false;
	int rc;
	while ((rc = caught_up(st, sb, &done)) == CTL_EXIT_OK && !done) {
		int64_t now = clock_monotonic_us();
		if (now >= deadline)
			break;
		if (now - said >= WAIT_REPORT_US) {
			progress(st, sb, (now - start) / 1e6, timeout_s);
			said = now;
		}
		sleep_us(deadline - now < WAIT_POLL_US ? deadline - now : WAIT_POLL_US);
	}
	if (rc != CTL_EXIT_OK)
		return rc;
	double took = (clock_monotonic_us() - start) / 1e6;
	long long pending = 0, unread = 0, dead = 0;
	if (!done) {
		fprintf(stderr, "cutoverctl: timed out after %g s waiting for sync-back to apply the events up to %s "
			"on %s to legacy\n", timeout_s, sb->mark, sb->stream.data);
		rc = report_left(st, sb, &pending, &unread);
	}
	struct buf dead_json;
	buf_init(&dead_json);
	if (rc == CTL_EXIT_OK)
		rc = report_dead(st, sb, &dead, &dead_json);
	if (rc == CTL_EXIT_OK && ctl->json)
		printf("{\"wait\":{\"until\":\"%s\",\"synced\":%s,\"seconds\":%.3f,\"pending\":%lld,\"unread\":%lld,"
		       "\"dead_lettered\":%s}}\n", sb->mark, done ? "true" : "false", took, pending, unread,
		       dead_json.data);
	else if (rc == CTL_EXIT_OK && done)
		printf("sync-back: legacy has every event up to %s after %.1f s; %lld dead-lettered meanwhile%s\n", sb->mark,
		       took, dead, dead ? " (NOT in legacy)" : "");
	buf_free(&dead_json);
	if (rc != CTL_EXIT_OK)
		return rc;
	return !done ? CTL_EXIT_NOT_SYNCED : dead ? CTL_EXIT_DEAD_LETTERED : CTL_EXIT_OK;
}
