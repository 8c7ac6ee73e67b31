/*
 * ctl_migration.c - `cutoverctl migration ...`: what lazy migration is
 * doing, and the operator's levers on it. The keys are those of
 * docs/design.md, "Lazy migration".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "flags/ctl.h"

/* Runs one command (printf-style) and checks the reply; on failure prints
 * the reason and sets *rc. The caller frees a non-NULL reply. */
static redisReply *migration_command(struct flag_store *st, int *rc, const char *fmt, ...)
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

static long long reply_int(const redisReply *r)
{
	return r->type == REDIS_REPLY_INTEGER ? r->integer : r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
}

/* Milliseconds since the stream entry id (ms-seq) was written. */
static double entry_age_s(const char *id)
{
	return (clock_realtime_us() / 1000 - atoll(id)) / 1000.0;
}

/* The age of the oldest entry of stream not yet acknowledged: the oldest
 * pending one, or the oldest not yet delivered to the group. A stream or
 * group that does not exist yet has no lag. */
static double stream_lag_s(struct flag_store *st, const char *stream)
{
	redisContext *c = flag_store_redis(st);
	const char *p = flag_store_prefix(st);
	double lag = 0;
	redisReply *r = redisCommand(c, "XPENDING %s:%s migrators", p, stream);
	if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && r->element[1]->type == REDIS_REPLY_STRING)
		lag = entry_age_s(r->element[1]->str);
	if (r)
		freeReplyObject(r);
	r = redisCommand(c, "XINFO GROUPS %s:%s", p, stream);
	bool grouped = false;
	for (size_t g = 0; r && r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
		const redisReply *info = r->element[g];
		for (size_t k = 0; k + 1 < info->elements; k += 2) {
			if (strcmp(info->element[k]->str, "last-delivered-id") != 0)
				continue;
			grouped = true;
			redisReply *next = redisCommand(c, "XRANGE %s:%s (%s + COUNT 1", p, stream, info->element[k + 1]->str);
			if (next && next->type == REDIS_REPLY_ARRAY && next->elements == 1) {
				double age = entry_age_s(next->element[0]->element[0]->str);
				lag = age > lag ? age : lag;
			}
			if (next)
				freeReplyObject(next);
		}
	}
	if (r)
		freeReplyObject(r);
	if (!grouped) {
		/* No worker has ever read it: its first entry waits longest. */
		r = redisCommand(c, "XRANGE %s:%s - + COUNT 1", p, stream);
		if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1)
			lag = entry_age_s(r->element[0]->element[0]->str);
		if (r)
			freeReplyObject(r);
	}
	return lag;
}

/* Entries of stream not yet handed to any worker: the group's lag, or
 * every entry while no worker has created the group. Acknowledged
 * entries stay in a stream, so its length says nothing about the work
 * left. */
static long long stream_undelivered(struct flag_store *st, const char *stream)
{
	redisContext *c = flag_store_redis(st);
	const char *p = flag_store_prefix(st);
	long long n = -1;
	redisReply *r = redisCommand(c, "XINFO GROUPS %s:%s", p, stream);
	for (size_t g = 0; r && r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
		const redisReply *info = r->element[g];
		bool ours = false;
		long long lag = -1;
		for (size_t k = 0; k + 1 < info->elements; k += 2) {
			if (strcmp(info->element[k]->str, "name") == 0)
				ours = strcmp(info->element[k + 1]->str, "migrators") == 0;
			else if (strcmp(info->element[k]->str, "lag") == 0 && info->element[k + 1]->type == REDIS_REPLY_INTEGER)
				lag = info->element[k + 1]->integer;
		}
		if (ours)
			n = lag;
	}
	if (r)
		freeReplyObject(r);
	if (n < 0) {
		/* No group yet, or a lag Redis cannot tell (after deletions). */
		r = redisCommand(c, "XLEN %s:%s", p, stream);
		n = r ? reply_int(r) : 0;
		if (r)
			freeReplyObject(r);
	}
	return n;
}

static int migration_status(struct ctl *ctl, int argc, char **argv)
{
	(void)argv;
	if (argc != 1)
		return ctl_usage_error("migration", ctl_verb_named(ctl_migration_verbs, "status"), "takes no arguments");
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	const char *p = flag_store_prefix(st);
	int rc = CTL_EXIT_OK;
	long long counts[5] = { 0 };
	static const char *const labels[5] = { "seen", "queued", "priority", "migrated", "dead" };
	const char *commands[5] = { "SCARD %s:seen", NULL, NULL, "HLEN %s:migrated", "XLEN %s:migrate:dead" };
	for (int i = 0; i < 5; i++) {
		if (commands[i] == NULL) {
			counts[i] = stream_undelivered(st, i == 1 ? "migrate" : "migrate:priority");
			continue;
		}
		redisReply *r = migration_command(st, &rc, commands[i], p);
		if (r == NULL)
			return rc;
		counts[i] = reply_int(r);
		freeReplyObject(r);
	}
	double lag = stream_lag_s(st, "migrate");
	double prio_lag = stream_lag_s(st, "migrate:priority");
	lag = prio_lag > lag ? prio_lag : lag;
	struct buf out;
	buf_init(&out);
	for (int i = 0; i < 5; i++) {
		if (ctl->json)
			buf_printf(&out, "%s\"%s\":%lld", i ? "," : "{", labels[i], counts[i]);
		else
			buf_printf(&out, "%-11s %lld\n", labels[i], counts[i]);
	}
	if (ctl->json)
		buf_printf(&out, ",\"oldest_lag_s\":%.3f,\"pending\":{", lag);
	else
		buf_printf(&out, "%-11s %.3f s\npending    ", "oldest lag", lag);
	/* Entries delivered but not acknowledged, per consumer. */
	const char *streams[2] = { "migrate", "migrate:priority" };
	int shown = 0;
	for (int s = 0; s < 2; s++) {
		redisReply *r = redisCommand(flag_store_redis(st), "XPENDING %s:%s migrators", p, streams[s]);
		if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 4 && r->element[3]->type == REDIS_REPLY_ARRAY) {
			for (size_t k = 0; k < r->element[3]->elements; k++) {
				const redisReply *c = r->element[3]->element[k];
				const char *sep = shown++ ? (ctl->json ? "," : ", ") : " ";
				if (ctl->json)
					buf_printf(&out, "%s\"%s%s\":%s", shown > 1 ? "," : "", c->element[0]->str,
						   s ? "/priority" : "", c->element[1]->str);
				else
					buf_printf(&out, "%s%s%s=%s", sep, c->element[0]->str, s ? "/priority" : "",
						   c->element[1]->str);
			}
		}
		if (r)
			freeReplyObject(r);
	}
	buf_puts(&out, ctl->json ? "}}" : (shown ? "" : " none"));
	printf("%s\n", out.data);
	buf_free(&out);
	return rc;
}

/*
 * For verbs whose operands are user ids: parses them (argv shifted so that
 * argv[1] is the first), checks them and opens the store into *st.
 * Returns 0 or an exit code.
 */
static int migration_user_operands(struct ctl *ctl, const char *verb_name, int *argc, char ***argv,
				   struct flag_store **st)
{
	const struct ctl_verb *verb = ctl_verb_named(ctl_migration_verbs, verb_name);
	int rc = ctl_operands("migration", verb, argc, argv);
	if (rc != CTL_EXIT_OK)
		return rc;
	if (*argc < 2)
		return ctl_usage_error("migration", verb, "expected user ids");
	if ((rc = ctl_check_ids(*argv + 1, (size_t)*argc - 1)) != CTL_EXIT_OK)
		return rc;
	*st = ctl_store(ctl);
	return *st ? CTL_EXIT_OK : CTL_EXIT_UNREACHABLE;
}

/* Appends users to the migrate stream by hand (reason `manual`). */
static int migration_enqueue(struct ctl *ctl, int argc, char **argv)
{
	struct flag_store *st;
	int rc = migration_user_operands(ctl, "enqueue", &argc, &argv, &st);
	if (rc != CTL_EXIT_OK)
		return rc;
	char at[24];
	snprintf(at, sizeof(at), "%lld", (long long)(clock_realtime_us() / 1000));
	for (int i = 1; i < argc; i++) {
		redisReply *r = migration_command(st, &rc, "XADD %s:migrate * user %s reason manual at %s",
						  flag_store_prefix(st), argv[i], at);
		if (r == NULL)
			return rc;
		printf(ctl->json ? "{\"user\":\"%s\",\"entry\":\"%s\"}\n" : "%s: enqueued as %s\n", argv[i], r->str);
		freeReplyObject(r);
	}
	return CTL_EXIT_OK;
}

static void print_entry(const struct ctl *ctl, const redisReply *e)
{
	const redisReply *fields = e->element[1];
	struct buf line;
	buf_init(&line);
	char when[32];
	format_utc_ms(atoll(e->element[0]->str), when, sizeof(when));
	if (ctl->json) {
		buf_printf(&line, "{\"entry\":\"%s\",\"time\":\"%s\"", e->element[0]->str, when);
		for (size_t k = 0; k + 1 < fields->elements; k += 2) {
			buf_printf(&line, ",\"%s\":", fields->element[k]->str);
			json_put_string(&line, fields->element[k + 1]->str, fields->element[k + 1]->len);
		}
		buf_putc(&line, '}');
	} else {
		buf_printf(&line, "%s %s", when, e->element[0]->str);
		for (size_t k = 0; k + 1 < fields->elements; k += 2)
			buf_printf(&line, " %s=%s", fields->element[k]->str, fields->element[k + 1]->str);
	}
	printf("%s\n", line.data);
	buf_free(&line);
}

/* Moves a dead-letter entry back onto the migrate stream: one script, so
 * the entry is never both dead and queued, nor lost between the two. */
static const char retry_script[] =
	"local p, id, user = ARGV[1], ARGV[2], ARGV[3]\n"
	"if redis.call('XDEL', p .. ':migrate:dead', id) == 0 then return 0 end\n"
	"redis.call('HDEL', p .. ':migrate:attempts', user)\n"
	"redis.call('XADD', p .. ':migrate', '*', 'user', user, 'reason', 'retry', 'at', ARGV[4])\n"
	"return 1\n";

/* The entry's user field (any bytes, NUL included), or NULL. */
static const redisReply *entry_user(const redisReply *e)
{
	const redisReply *fields = e->element[1];
	for (size_t k = 0; k + 1 < fields->elements; k += 2)
		if (strcmp(fields->element[k]->str, "user") == 0)
			return fields->element[k + 1];
	return NULL;
}

static bool listed(char **ids, int n, const redisReply *user)
{
	for (int i = 0; i < n; i++)
		if (user && strlen(ids[i]) == user->len && memcmp(ids[i], user->str, user->len) == 0)
			return true;
	return n == 0;
}

/* migration dead list | migration dead retry [ID...] */
static int migration_dead(struct ctl *ctl, int argc, char **argv)
{
	const struct ctl_verb *verb = ctl_verb_named(ctl_migration_verbs, "dead");
	int rc = ctl_operands("migration", verb, &argc, &argv);
	if (rc != CTL_EXIT_OK)
		return rc;
	bool list = argc == 2 && strcmp(argv[1], "list") == 0;
	if (!list && !(argc >= 2 && strcmp(argv[1], "retry") == 0))
		return ctl_usage_error("migration", verb, "expected list, or retry [ID...]");
	if (!list && (rc = ctl_check_ids(argv + 2, (size_t)argc - 2)) != CTL_EXIT_OK)
		return rc;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	const char *p = flag_store_prefix(st);
	redisReply *r = migration_command(st, &rc, "XRANGE %s:migrate:dead - +", p);
	if (r == NULL)
		return rc;
	char at[24];
	snprintf(at, sizeof(at), "%lld", (long long)(clock_realtime_us() / 1000));
	long long retried = 0;
	for (size_t i = 0; i < r->elements && rc == CTL_EXIT_OK; i++) {
		const redisReply *e = r->element[i];
		const redisReply *user = entry_user(e);
		if (list) {
			print_entry(ctl, e);
		} else if (user && listed(argv + 2, argc - 2, user)) {
			redisReply *done = migration_command(st, &rc, "EVAL %s 0 %s %s %b %s", retry_script, p,
							     e->element[0]->str, user->str, user->len, at);
			retried += done ? reply_int(done) : 0;
			if (done)
				freeReplyObject(done);
		}
	}
	freeReplyObject(r);
	if (!list && rc == CTL_EXIT_OK)
		printf(ctl->json ? "{\"retried\":%lld}\n" : "%lld dead-letter entries back on the migrate stream\n", retried);
	return rc;
}

/* Forgets that users were seen and migrated, so they migrate again the
 * next time they are seen (or are enqueued). */
static int migration_forget(struct ctl *ctl, int argc, char **argv)
{
	struct flag_store *st;
	int rc = migration_user_operands(ctl, "forget", &argc, &argv, &st);
	if (rc != CTL_EXIT_OK)
		return rc;
	const char *p = flag_store_prefix(st);
	for (int i = 1; i < argc; i++) {
		redisReply *r = migration_command(st, &rc, "EVAL %s 0 %s %s",
						  "redis.call('SREM', ARGV[1] .. ':seen', ARGV[2]); "
						  "redis.call('HDEL', ARGV[1] .. ':migrate:attempts', ARGV[2]); "
						  "return redis.call('HDEL', ARGV[1] .. ':migrated', ARGV[2])",
						  p, argv[i]);
		if (r == NULL)
			return rc;
		printf(ctl->json ? "{\"user\":\"%s\",\"was_migrated\":%s}\n" : "%s: forgotten%s\n", argv[i],
		       ctl->json ? (reply_int(r) ? "true" : "false") : (reply_int(r) ? " (was migrated)" : ""));
		freeReplyObject(r);
	}
	return CTL_EXIT_OK;
}

const struct ctl_verb ctl_migration_verbs[] = {
	{ "status", "", "seen, queued, migrated, dead, oldest lag, pending per consumer", NULL, migration_status },
	{ "enqueue", "ID...", "put users on the migrate stream now", NULL, migration_enqueue },
	{ "dead", "list | retry [ID...]", "list dead-letter entries, or put them back on the stream (all, or these users)",
	  NULL, migration_dead },
	{ "forget", "ID...", "forget users were seen and migrated, so they migrate again",
	  "Proxies keep their own copy of the migrated set until restarted: a forgotten\n"
	  "user's reads stay on the service there. Use it to re-copy a user, then\n"
	  "'migration enqueue' them.\n",
	  migration_forget },
	{ NULL, NULL, NULL, NULL, NULL },
};
