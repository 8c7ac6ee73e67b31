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

/* ---------------------------------------------------------- dead letters */

/* A field of a dead-letter entry as `dead list` shows it. */
struct dead_field {
	const char *name; /* in the entry */
	const char *shown;
};

/* Sync-back's entries, in the order an operator reads them; `at` is the
 * entry id's time, and `entry` (the event's id) is shown as `event`,
 * the entry being the dead letter's own id. */
static const struct dead_field syncback_fields[] = {
	{ "entry", "event" }, { "user", "user" }, { "type", "type" }, { "version", "version" },
	{ "reason", "reason" }, { "attempts", "attempts" }, { "error", "error" }, { NULL, NULL },
};

/*
 * One of the two dead-letter streams `migration dead` works on, and where
 * a retry sends its entries: the migrate stream (a fresh entry for the
 * user), or with --syncback the events stream (a copy of the event the
 * entry names, which the `syncback` group then delivers again).
 */
struct dead_letters {
	bool syncback;
	struct buf key;      /* the dead-letter stream */
	struct buf attempts; /* the attempts hash the retry clears */
	struct buf stream;   /* where retried entries go */
	struct buf where;    /* that, as messages name it */
	const struct dead_field *fields; /* what list shows, in order; NULL: every field as stored */
};

static void dead_letters_init(struct dead_letters *dl, const struct ctl *ctl, struct flag_store *st, bool syncback)
{
	const char *p = flag_store_prefix(st);
	dl->syncback = syncback;
	buf_init(&dl->key);
	buf_init(&dl->attempts);
	buf_init(&dl->stream);
	buf_init(&dl->where);
	if (syncback) {
		ctl_syncback_keys(ctl, st, &dl->stream, &dl->key);
		flag_store_key(p, "syncback:attempts", &dl->attempts);
		buf_printf(&dl->where, "events stream %s", dl->stream.data);
	} else {
		flag_store_key(p, "migrate:dead", &dl->key);
		flag_store_key(p, "migrate:attempts", &dl->attempts);
		flag_store_key(p, "migrate", &dl->stream);
		buf_puts(&dl->where, "migrate stream");
	}
	dl->fields = syncback ? syncback_fields : NULL;
}

static void dead_letters_free(struct dead_letters *dl)
{
	buf_free(&dl->key);
	buf_free(&dl->attempts);
	buf_free(&dl->stream);
	buf_free(&dl->where);
}

/* Appends one field to a list line, as JSON or " name=value". */
static void put_field(const struct ctl *ctl, const char *name, const redisReply *v, struct buf *line)
{
	if (ctl->json) {
		buf_printf(line, ",\"%s\":", name);
		json_put_string(line, v ? v->str : "", v ? v->len : 0);
	} else {
		buf_printf(line, " %s=%s", name, v ? v->str : "");
	}
}

/* The line of one dead-letter entry: its time and id, then its fields
 * (all as stored, or fields). */
static void print_entry(const struct ctl *ctl, const redisReply *e, const struct dead_field *fields)
{
	const redisReply *stored = e->element[1];
	struct buf line;
	buf_init(&line);
	char when[32];
	format_utc_ms(atoll(e->element[0]->str), when, sizeof(when));
	if (ctl->json)
		buf_printf(&line, "{\"entry\":\"%s\",\"time\":\"%s\"", e->element[0]->str, when);
	else
		buf_printf(&line, "%s %s", when, e->element[0]->str);
	for (size_t k = 0; fields == NULL && k + 1 < stored->elements; k += 2)
		put_field(ctl, stored->element[k]->str, stored->element[k + 1], &line);
	for (const struct dead_field *f = fields; f && f->name; f++)
		put_field(ctl, f->shown, ctl_entry_field(e, f->name), &line);
	if (ctl->json)
		buf_putc(&line, '}');
	printf("%s\n", line.data);
	buf_free(&line);
}

/*
 * Puts a dead-letter entry back, in one script so that it is never both
 * dead and queued, nor lost between the two, and two operators retrying
 * at once send it back once: whoever finds it still in the dead-letter
 * stream moves it. Mode "fresh" adds a migrate entry for the user; mode
 * "copy" adds a copy of the event the entry names, if the stream still
 * holds it (else -1, and the entry stays). Clears the user's attempts.
 * Returns the new entry's id, or 0 when the entry was gone already.
 *   KEYS: dead-letter stream, attempts hash, the stream it goes back to
 *   ARGV: dead-letter id, user, mode, the event's id, at
 */
static const char retry_script[] =
	"local dead, attempts, stream = KEYS[1], KEYS[2], KEYS[3]\n"
	"if #redis.call('XRANGE', dead, ARGV[1], ARGV[1]) == 0 then return 0 end\n"
	"local fields = {'user', ARGV[2], 'reason', 'retry', 'at', ARGV[5]}\n"
	"if ARGV[3] == 'copy' then\n"
	"  local e = redis.call('XRANGE', stream, ARGV[4], ARGV[4])\n"
	"  if #e == 0 then return -1 end\n"
	"  fields = e[1][2]\n"
	"end\n"
	"redis.call('XDEL', dead, ARGV[1])\n"
	"redis.call('HDEL', attempts, ARGV[2])\n"
	"return redis.call('XADD', stream, '*', unpack(fields))\n";

/* Whether user is one of ids (any user when there are none); marks the
 * ids it matches in found. */
static bool listed(char **ids, int n, const redisReply *user, bool *found)
{
	bool hit = n == 0;
	for (int i = 0; i < n; i++) {
		if (user && strlen(ids[i]) == user->len && memcmp(ids[i], user->str, user->len) == 0) {
			found[i] = true;
			hit = true;
		}
	}
	return hit;
}

/* What became of one entry a retry took on. */
enum retry_outcome { RETRY_DONE, RETRY_GONE, RETRY_LEFT };

/* Says what became of a sync-back entry: stdout when retried, stderr when
 * left (its event no longer in the events stream); JSON puts both on
 * stdout. new_id: the copy's, or NULL. */
static void report_retry(const struct ctl *ctl, const struct dead_letters *dl, const redisReply *e,
			 const redisReply *user, const redisReply *event, const char *new_id)
{
	const char *ev = event && event->len ? event->str : "";
	if (ctl->json) {
		struct buf line;
		buf_init(&line);
		buf_printf(&line, "{\"entry\":\"%s\",\"user\":", e->element[0]->str);
		json_put_string(&line, user->str, user->len);
		buf_puts(&line, ",\"event\":");
		json_put_string(&line, ev, strlen(ev));
		if (new_id)
			buf_printf(&line, ",\"retried_as\":\"%s\"}", new_id);
		else
			buf_printf(&line, ",\"retried_as\":null,\"left\":\"%s\"}", *ev ? "event gone" : "no event id");
		printf("%s\n", line.data);
		buf_free(&line);
	} else if (new_id) {
		printf("%s user %s: event %s back on the %s as %s\n", e->element[0]->str, user->str, ev, dl->where.data,
		       new_id);
	} else if (*ev) {
		fprintf(stderr, "cutoverctl: %s user %s: event %s is no longer in %s (trimmed): left in %s\n",
			e->element[0]->str, user->str, ev, dl->stream.data, dl->key.data);
	} else {
		fprintf(stderr, "cutoverctl: %s user %s: names no event: left in %s\n", e->element[0]->str, user->str,
			dl->key.data);
	}
}

/* Retries one dead-letter entry (see retry_script); *outcome says how it
 * went. Returns an exit code. */
static int retry_entry(const struct ctl *ctl, struct flag_store *st, const struct dead_letters *dl,
		       const redisReply *e, const redisReply *user, const char *at, enum retry_outcome *outcome)
{
	const redisReply *event = dl->syncback ? ctl_entry_field(e, "entry") : NULL;
	int rc = CTL_EXIT_OK;
	redisReply *r = NULL;
	*outcome = RETRY_LEFT;
	if (!dl->syncback || (event && event->len > 0)) {
		r = ctl_command(st, &rc, "EVAL %s 3 %s %s %s %s %b %s %b %s", retry_script, dl->key.data,
				dl->attempts.data, dl->stream.data, e->element[0]->str, user->str, user->len,
				dl->syncback ? "copy" : "fresh", event ? event->str : "", event ? event->len : 0, at);
		if (r == NULL)
			return rc;
		*outcome = r->type == REDIS_REPLY_STRING ? RETRY_DONE : ctl_reply_int(r) == 0 ? RETRY_GONE : RETRY_LEFT;
	}
	if (*outcome == RETRY_GONE)
		fprintf(stderr, "cutoverctl: %s user %s: no longer in %s (retried meanwhile?)\n", e->element[0]->str,
			user->str, dl->key.data);
	else if (dl->syncback)
		report_retry(ctl, dl, e, user, event, *outcome == RETRY_DONE ? r->str : NULL);
	if (r)
		freeReplyObject(r);
	return CTL_EXIT_OK;
}

/*
 * dead retry: each entry (r, XRANGE of the dead-letter stream) of the
 * users ids (all when nids is 0) goes back, then a count. Exit 4 for a
 * user without an entry, 8 for entries left because their event is gone.
 */
static int retry_entries(const struct ctl *ctl, struct flag_store *st, const struct dead_letters *dl,
			 const redisReply *r, char **ids, int nids)
{
	char at[24];
	snprintf(at, sizeof(at), "%lld", (long long)(clock_realtime_us() / 1000));
	bool *found = xcalloc((size_t)nids + 1, sizeof(*found));
	long long retried = 0, left = 0;
	int rc = CTL_EXIT_OK;
	for (size_t i = 0; r && i < r->elements && rc == CTL_EXIT_OK; i++) {
		const redisReply *user = ctl_entry_field(r->element[i], "user");
		enum retry_outcome how;
		if (user && listed(ids, nids, user, found) &&
		    (rc = retry_entry(ctl, st, dl, r->element[i], user, at, &how)) == CTL_EXIT_OK) {
			retried += how == RETRY_DONE;
			left += how == RETRY_LEFT;
		}
	}
	bool unknown = false;
	for (int i = 0; i < nids && rc == CTL_EXIT_OK; i++) {
		if (!found[i])
			fprintf(stderr, "cutoverctl: no dead-letter entry for user '%s' in %s\n", ids[i], dl->key.data);
		unknown = unknown || !found[i];
	}
	free(found);
	if (rc != CTL_EXIT_OK)
		return rc;
	if (ctl->json)
		printf("{\"retried\":%lld,\"left\":%lld}\n", retried, left);
	else if (left)
		printf("%lld dead-letter entries back on the %s; %lld left in %s\n", retried, dl->where.data, left,
		       dl->key.data);
	else
		printf("%lld dead-letter entries back on the %s\n", retried, dl->where.data);
	return unknown ? CTL_EXIT_INVALID : left ? CTL_EXIT_NOT_RETRIED : CTL_EXIT_OK;
}

static int dead_option(int opt, const char *arg, void *state)
{
	(void)opt;
	(void)arg;
	*(bool *)state = true;
	return 0;
}

static const struct option dead_options[] = {
	{ "syncback", no_argument, NULL, 'S' },
	{ NULL, 0, NULL, 0 },
};

/* migration dead [--syncback] list | migration dead [--syncback] retry [ID...] */
static int migration_dead(struct ctl *ctl, int argc, char **argv)
{
	const struct ctl_verb *verb = ctl_verb_named(ctl_migration_verbs, "dead");
	bool syncback = false;
	int first = ctl_parse_options("migration", verb, argc, argv, "", dead_options, dead_option, &syncback);
	if (first < 0)
		return -first;
	argc -= first - 1;
	argv += first - 1;
	bool list = argc == 2 && strcmp(argv[1], "list") == 0;
	if (!list && !(argc >= 2 && strcmp(argv[1], "retry") == 0))
		return ctl_usage_error("migration", verb, "expected list, or retry [ID...]");
	int rc = list ? CTL_EXIT_OK : ctl_check_ids(argv + 2, (size_t)argc - 2);
	if (rc != CTL_EXIT_OK)
		return rc;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	struct dead_letters dl;
	dead_letters_init(&dl, ctl, st, syncback);
	bool exists = false;
	redisReply *r = NULL;
	rc = ctl_stream_exists(st, dl.key.data, &exists);
	if (rc == CTL_EXIT_OK && exists)
		r = ctl_command(st, &rc, "XRANGE %s - +", dl.key.data);
	if (rc == CTL_EXIT_OK && !exists)
		fprintf(stderr, "cutoverctl: no dead-letter stream %s: nothing was dead-lettered\n", dl.key.data);
	if (rc == CTL_EXIT_OK && list) {
		for (size_t i = 0; r && i < r->elements; i++)
			print_entry(ctl, r->element[i], dl.fields);
		if (!ctl->json)
			printf("%zu dead-letter entries in %s\n", r ? r->elements : 0, dl.key.data);
	} else if (rc == CTL_EXIT_OK) {
		rc = retry_entries(ctl, st, &dl, r, argv + 2, argc - 2);
	}
	if (r)
		freeReplyObject(r);
	dead_letters_free(&dl);
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
	{ "dead", "[--syncback] list | retry [ID...]",
	  "list dead-letter entries, or put them back on the stream (all, or these users)",
	  "  --syncback  sync-back's dead letters (<prefix>:syncback:dead) instead of the\n"
	  "              migrate stream's: retry puts a copy of each entry's event back on\n"
	  "              the events stream (--events), for the \"syncback\" group to apply\n"
	  "              again; an event no longer there leaves its entry, exit 8\n"
	  "Retry clears the users' attempts. A user without an entry is exit 4.\n",
	  migration_dead },
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
