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

/* Appends the consumers of a migrate stream that hold pending entries,
 * as "name=N" (text) or "name":N (JSON); *shown counts them across
 * both streams. */
static void put_pending(const struct ctl *ctl, const struct ctl_stream_lag *q, const char *suffix, int *shown,
			struct buf *out)
{
	struct buf name;
	buf_init(&name);
	for (size_t i = 0; i < q->nconsumers; i++) {
		const struct ctl_stream_consumer *c = &q->consumers[i];
		if (c->pending == 0)
			continue;
		buf_reset(&name);
		buf_printf(&name, "%s%s", c->name, suffix);
		if (ctl->json) {
			buf_puts(out, (*shown)++ ? "," : "");
			json_put_string(out, name.data, name.len);
			buf_printf(out, ":%lld", c->pending);
		} else {
			buf_printf(out, "%s%s=%lld", (*shown)++ ? ", " : " ", name.data, c->pending);
		}
	}
	buf_free(&name);
}

/*
 * Counts of the migration keys, how far the workers are behind on both
 * migrate streams (entries not yet handed to a worker, the age of the
 * oldest one not acknowledged, pending entries per consumer), then the
 * same for sync-back.
 */
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
		redisReply *r = commands[i] ? ctl_command(st, &rc, commands[i], p) : NULL;
		if (r == NULL && rc != CTL_EXIT_OK)
			return rc;
		counts[i] = r ? ctl_reply_int(r) : 0;
		if (r)
			freeReplyObject(r);
	}
	static const char *const streams[2] = { "migrate", "migrate:priority" };
	struct ctl_stream_lag q[2];
	struct ctl_syncback sb;
	struct buf out;
	memset(q, 0, sizeof(q));
	memset(&sb, 0, sizeof(sb));
	buf_init(&out);
	for (int s = 0; s < 2 && rc == CTL_EXIT_OK; s++) {
		flag_store_key(p, streams[s], &out);
		rc = ctl_stream_lag_read(st, out.data, "migrators", &q[s]);
	}
	if (rc == CTL_EXIT_OK)
		rc = ctl_syncback_read(ctl, st, false, &sb);
	if (rc != CTL_EXIT_OK)
		goto done;
	counts[1] = q[0].unread;
	counts[2] = q[1].unread;
	double lag = q[1].oldest_s > q[0].oldest_s ? q[1].oldest_s : q[0].oldest_s;
	buf_reset(&out);
	for (int i = 0; i < 5; i++) {
		if (ctl->json)
			buf_printf(&out, "%s\"%s\":%lld", i ? "," : "{", labels[i], counts[i]);
		else
			buf_printf(&out, "%-11s %lld\n", labels[i], counts[i]);
	}
	if (ctl->json)
		buf_printf(&out, ",\"oldest_lag_s\":%.3f,\"pending\":{", lag);
	else
		buf_printf(&out, "%-11s %.3f s\n%-11s", "oldest lag", lag, "pending");
	int shown = 0;
	put_pending(ctl, &q[0], "", &shown, &out);
	put_pending(ctl, &q[1], "/priority", &shown, &out);
	if (ctl->json) {
		buf_puts(&out, "},\"syncback\":");
		ctl_syncback_json(&sb, &out);
		buf_puts(&out, "}\n");
	} else {
		buf_puts(&out, shown ? "\n" : " none\n");
		ctl_syncback_section(&sb, &out);
	}
	fputs(out.data, stdout);
done:
	buf_free(&out);
	ctl_stream_lag_free(&q[0]);
	ctl_stream_lag_free(&q[1]);
	ctl_syncback_free(&sb);
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
		redisReply *r = ctl_command(st, &rc, "XADD %s:migrate * user %s reason manual at %s",
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
	redisReply *r = ctl_command(st, &rc, "XRANGE %s:migrate:dead - +", p);
	if (r == NULL)
		return rc;
	char at[24];
	snprintf(at, sizeof(at), "%lld", (long long)(clock_realtime_us() / 1000));
	long long retried = 0;
	for (size_t i = 0; i < r->elements && rc == CTL_EXIT_OK; i++) {
		const redisReply *e = r->element[i];
		const redisReply *user = ctl_entry_field(e, "user");
		if (list) {
			print_entry(ctl, e);
		} else if (user && listed(argv + 2, argc - 2, user)) {
			redisReply *done = ctl_command(st, &rc, "EVAL %s 0 %s %s %b %s", retry_script, p,
							     e->element[0]->str, user->str, user->len, at);
			retried += done ? ctl_reply_int(done) : 0;
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
		redisReply *r = ctl_command(st, &rc, "EVAL %s 0 %s %s",
						  "redis.call('SREM', ARGV[1] .. ':seen', ARGV[2]); "
						  "redis.call('HDEL', ARGV[1] .. ':migrate:attempts', ARGV[2]); "
						  "return redis.call('HDEL', ARGV[1] .. ':migrated', ARGV[2])",
						  p, argv[i]);
		if (r == NULL)
			return rc;
		printf(ctl->json ? "{\"user\":\"%s\",\"was_migrated\":%s}\n" : "%s: forgotten%s\n", argv[i],
		       ctl->json ? (ctl_reply_int(r) ? "true" : "false") : (ctl_reply_int(r) ? " (was migrated)" : ""));
		freeReplyObject(r);
	}
	return CTL_EXIT_OK;
}

const struct ctl_verb ctl_migration_verbs[] = {
	{ "status", "", "seen, queued, migrated, dead, oldest lag, pending per consumer; sync-back",
	  "The sync-back section: the users service's events stream (--events), what its\n"
	  "\"syncback\" group has pending and not yet read, the age of the oldest event\n"
	  "not yet acknowledged, the dead-letter count and each consumer's pending and idle.\n",
	  migration_status },
	{ "enqueue", "ID...", "put users on the migrate stream now", NULL, migration_enqueue },
	{ "dead", "list | retry [ID...]", "list dead-letter entries, or put them back on the stream (all, or these users)",
	  NULL, migration_dead },
	{ "forget", "ID...", "forget users were seen and migrated, so they migrate again",
	  "Proxies keep their own copy of the migrated set until restarted: a forgotten\n"
	  "user's reads stay on the service there. Use it to re-copy a user, then\n"
	  "'migration enqueue' them.\n",
	  migration_forget },
	{ "verify", "[-c FILE] [--sample N | --all | ID...]", "compare migrated users field by field: legacy vs the service",
	  "  -c, --config FILE  the migrator's configuration (default /etc/cutover/migrate.conf);\n"
	  "                     its Redis URL and prefix unless --redis or --prefix is given\n"
	  "  --sample N         N random users of <prefix>:migrated (the default, N = 100)\n"
	  "  --all              every user of <prefix>:migrated\n"
	  "  ID...              these users\n"
	  "Exit 0 when both sides agree, 7 with drift, 3 when Redis, legacy or the service\n"
	  "cannot be read, 4 for a bad configuration.\n",
	  migration_verify },
	{ NULL, NULL, NULL, NULL, NULL },
};
