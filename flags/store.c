/*
 * store.c - flags in Redis (layout in docs/design.md), with a synchronous
 * hiredis connection: what cutoverctl and the tests use.
 *
 * Every write is one Lua script, so the flag, the version bump, the audit
 * entry and the PUBLISH happen together or not at all. A script cannot be
 * rolled back half way, so each one first checks everything that could
 * make a later command fail (key types, a non-integer version) and only
 * then writes. Writes are compare-and-set on the flag's JSON: two
 * operators editing the same flag never lose each other's change.
 * Reads of a whole snapshot are also one script, so a snapshot never
 * mixes two versions.
 *
 * The scripts build key names from the prefix instead of declaring them
 * in KEYS, which ties cutover to a single Redis (with replicas), not to
 * Redis Cluster.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "flags.h"

#define AUDIT_MAXLEN "100000"
#define STORE_UPDATE_ATTEMPTS 10

struct flag_store {
	redisContext *c;
	struct redis_url url;
	char *prefix;
	char description[256];
};

/* Returns version, [name, json, ...], [cohort, [member, ...], ...]. */
const char flag_store_load_script[] =
	"local p = ARGV[1]\n"
	"local flags, cohorts = {}, {}\n"
	"for _, n in ipairs(redis.call('SMEMBERS', p .. ':flags')) do\n"
	"  local j = redis.call('GET', p .. ':flag:' .. n)\n"
	"  if j then flags[#flags + 1] = n; flags[#flags + 1] = j end\n"
	"end\n"
	"for _, c in ipairs(redis.call('SMEMBERS', p .. ':cohorts')) do\n"
	"  cohorts[#cohorts + 1] = c\n"
	"  cohorts[#cohorts + 1] = redis.call('SMEMBERS', p .. ':cohort:' .. c)\n"
	"end\n"
	"return {redis.call('GET', p .. ':flags:version') or '0', flags, cohorts}\n";

/* Checks shared by both write scripts: fail before the first write. */
#define STORE_LUA_PRELUDE                                                                   \
	"local p = ARGV[1]\n"                                                               \
	"local vk, audit = p .. ':flags:version', p .. ':flags:audit'\n"                    \
	"local function want(k, t)\n"                                                       \
	"  local have = redis.call('TYPE', k).ok\n"                                         \
	"  if have ~= 'none' and have ~= t then error('key ' .. k .. ' holds a ' .. have .. ', not a ' .. t) end\n" \
	"end\n"                                                                             \
	"want(vk, 'string'); want(audit, 'stream')\n"                                       \
	"local v = redis.call('GET', vk)\n"                                                 \
	"if v and not string.match(v, '^%d+$') then error('key ' .. vk .. ' is not an integer') end\n" \
	"local function commit(subject, actor, action, old, new)\n"                         \
	"  local ver = redis.call('INCR', vk)\n"                                            \
	"  redis.call('XADD', audit, 'MAXLEN', '~', " AUDIT_MAXLEN ", '*', 'subject', subject,\n" \
	"    'actor', actor, 'action', action, 'old', old, 'new', new, 'version', ver)\n"    \
	"  redis.call('PUBLISH', p .. ':flags:changed', ver)\n"                             \
	"  return ver\n"                                                                    \
	"end\n"

/* ARGV: prefix, name, expected old JSON ('' = absent), new JSON ('' =
 * delete), actor, action. Returns {'ok', version} or {'conflict', cur}. */
static const char store_write_script[] = STORE_LUA_PRELUDE
	"local name, expected, new = ARGV[2], ARGV[3], ARGV[4]\n"
	"local fk, names = p .. ':flag:' .. name, p .. ':flags'\n"
	"want(fk, 'string'); want(names, 'set')\n"
	"local cur = redis.call('GET', fk) or ''\n"
	"if cur ~= expected then return {'conflict', cur} end\n"
	"if new == '' then\n"
	"  redis.call('DEL', fk); redis.call('SREM', names, name)\n"
	"else\n"
	"  redis.call('SET', fk, new); redis.call('SADD', names, name)\n"
	"end\n"
	"return {'ok', commit(name, ARGV[5], ARGV[6], cur, new)}\n";

/* ARGV: prefix, cohort, 'add' | 'remove', actor, action, id... Returns
 * {changed, version}; nothing is bumped when no member changed. */
static const char store_cohort_script[] = STORE_LUA_PRELUDE
	"local name, op = ARGV[2], ARGV[3]\n"
	"local ck, names = p .. ':cohort:' .. name, p .. ':cohorts'\n"
	"want(ck, 'set'); want(names, 'set')\n"
	"local changed = 0\n"
	"for i = 6, #ARGV do\n"
	"  changed = changed + redis.call(op == 'add' and 'SADD' or 'SREM', ck, ARGV[i])\n"
	"end\n"
	"if changed == 0 then return {0, tonumber(v or '0')} end\n"
	"if redis.call('SCARD', ck) == 0 then redis.call('SREM', names, name)\n"
	"else redis.call('SADD', names, name) end\n"
	"return {changed, commit('cohort:' .. name, ARGV[4], ARGV[5], '', '')}\n";

void flag_store_key(const char *prefix, const char *suffix, struct buf *out)
{
	buf_reset(out);
	buf_printf(out, "%s:%s", prefix, suffix);
}

/*
 * Connects to the Redis at url (see redis_url.c) with timeout_ms for the
 * connect and each command. Returns the store (caller closes it), or NULL
 * with the URL and the reason in err.
 */
struct flag_store *flag_store_open(const char *url, const char *prefix, int timeout_ms, char *err,
				   size_t errlen)
{
	struct flag_store *st = xcalloc(1, sizeof(*st));
	char why[FLAG_ERR_MAX];
	if (redis_url_parse(url, &st->url, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "invalid Redis URL '%s': %s", url, why);
		free(st);
		return NULL;
	}
	redis_url_describe(&st->url, st->description, sizeof(st->description));
	st->prefix = xstrdup(prefix);
	st->c = redis_connect(&st->url, timeout_ms, why, sizeof(why));
	if (st->c == NULL) {
		snprintf(err, errlen, "cannot reach Redis at %s: %s", st->description, why);
		flag_store_close(st);
		return NULL;
	}
	return st;
}

void flag_store_close(struct flag_store *st)
{
	if (st == NULL)
		return;
	if (st->c)
		redisFree(st->c);
	redis_url_free(&st->url);
	free(st->prefix);
	free(st);
}

/* The URL without its password, for messages. */
const char *flag_store_describe(const struct flag_store *st)
{
	return st->description;
}

/* The connection and prefix, for commands outside the flag layout
 * (cutoverctl migration). */
redisContext *flag_store_redis(struct flag_store *st)
{
	return st->c;
}

const char *flag_store_prefix(const struct flag_store *st)
{
	return st->prefix;
}

/* Maps a missing or error reply to a status, with the reason in err. */
int flag_store_reply_status(struct flag_store *st, const redisReply *r, char *err, size_t errlen)
{
	if (r == NULL) {
		snprintf(err, errlen, "Redis at %s: %s", st->description, redis_error_text(st->c));
		return STORE_UNREACHABLE;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		snprintf(err, errlen, "Redis at %s refused: %s", st->description, r->str);
		return STORE_INVALID;
	}
	return STORE_OK;
}

static bool reply_is_string(const redisReply *r)
{
	return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
}

static long long reply_integer(const redisReply *r)
{
	return r->type == REDIS_REPLY_INTEGER ? r->integer : strtoll(r->str, NULL, 10);
}

/* Copies the string elements of an array reply into l. */
static void reply_to_idlist(const redisReply *r, struct flag_idlist *l)
{
	l->items = xcalloc(r->elements + 1, sizeof(char *));
	l->n = 0;
	for (size_t i = 0; i < r->elements; i++)
		if (reply_is_string(r->element[i]))
			l->items[l->n++] = xstrndup(r->element[i]->str, r->element[i]->len);
}

/*
 * Builds a sealed snapshot from the reply of flag_store_load_script.
 * Returns 0, or -1 with err naming the bad flag: one bad flag rejects the
 * whole snapshot, so readers keep the last good one rather than serve a
 * half-read state.
 */
int flag_snapshot_from_reply(const redisReply *r, struct flag_snapshot **out, char *err, size_t errlen)
{
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || !reply_is_string(r->element[0]) ||
	    r->element[1]->type != REDIS_REPLY_ARRAY || r->element[2]->type != REDIS_REPLY_ARRAY) {
		snprintf(err, errlen, "unexpected reply shape from the snapshot script");
		return -1;
	}
	struct flag_snapshot *s = flag_snapshot_new(reply_integer(r->element[0]));
	const redisReply *flags = r->element[1], *cohorts = r->element[2];
	char why[FLAG_ERR_MAX];
	for (size_t i = 0; i + 1 < flags->elements; i += 2) {
		const redisReply *json = flags->element[i + 1];
		struct flag *f = flag_decode(json->str, json->len, why, sizeof(why));
		if (f == NULL || strcmp(f->name, flags->element[i]->str) != 0) {
			snprintf(err, errlen, "flag '%s' in Redis is invalid: %s", flags->element[i]->str,
				 f ? "its name field differs from its key" : why);
			flag_free(f);
			flag_snapshot_unref(s);
			return -1;
		}
		flag_snapshot_add_flag(s, f);
	}
	for (size_t i = 0; i + 1 < cohorts->elements; i += 2) {
		struct flag_idlist members;
		reply_to_idlist(cohorts->element[i + 1], &members);
		flag_snapshot_add_cohort(s, cohorts->element[i]->str, &members);
	}
	flag_snapshot_seal(s);
	*out = s;
	return 0;
}

/* Reads every flag and cohort in one consistent step. On STORE_OK *out
 * is a sealed snapshot the caller unrefs. */
int flag_store_load(struct flag_store *st, struct flag_snapshot **out, char *err, size_t errlen)
{
	redisReply *r = redisCommand(st->c, "EVAL %s 0 %s", flag_store_load_script, st->prefix);
	int rc = flag_store_reply_status(st, r, err, errlen);
	if (rc == STORE_OK && flag_snapshot_from_reply(r, out, err, errlen) < 0)
		rc = STORE_INVALID;
	if (r)
		freeReplyObject(r);
	return rc;
}

/* Reads one flag's raw JSON into *json (caller frees). */
static int store_get_raw(struct flag_store *st, const char *name, char **json, char *err, size_t errlen)
{
	redisReply *r = redisCommand(st->c, "GET %s:flag:%s", st->prefix, name);
	int rc = flag_store_reply_status(st, r, err, errlen);
	if (rc == STORE_OK && r->type == REDIS_REPLY_NIL) {
		snprintf(err, errlen, "no such flag '%s'", name);
		rc = STORE_NOT_FOUND;
	} else if (rc == STORE_OK) {
		*json = xstrndup(r->str, r->len);
	}
	if (r)
		freeReplyObject(r);
	return rc;
}

/* Reads one flag. On STORE_OK *out is the caller's to free. */
int flag_store_get(struct flag_store *st, const char *name, struct flag **out, char *err, size_t errlen)
{
	char *json = NULL;
	int rc = store_get_raw(st, name, &json, err, errlen);
	if (rc != STORE_OK)
		return rc;
	char why[FLAG_ERR_MAX];
	*out = flag_decode(json, strlen(json), why, sizeof(why));
	if (*out == NULL) {
		snprintf(err, errlen, "flag '%s' in Redis is invalid: %s", name, why);
		rc = STORE_INVALID;
	}
	free(json);
	return rc;
}

/* Runs the write script: expected/new are JSON or "" (absent). */
static int store_write(struct flag_store *st, const char *name, const char *expected, const char *new_json,
		       const char *actor, const char *action, long long *version, char *err, size_t errlen)
{
	const char *argv[] = { "EVAL", store_write_script, "0", st->prefix, name, expected, new_json, actor, action };
	redisReply *r = redisCommandArgv(st->c, sizeof(argv) / sizeof(argv[0]), argv, NULL);
	int rc = flag_store_reply_status(st, r, err, errlen);
	if (rc == STORE_OK) {
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
			snprintf(err, errlen, "unexpected reply from the write script");
			rc = STORE_INVALID;
		} else if (strcmp(r->element[0]->str, "conflict") == 0) {
			snprintf(err, errlen, "flag '%s' changed while being written", name);
			rc = STORE_CONFLICT;
		} else {
			*version = reply_integer(r->element[1]);
		}
	}
	if (r)
		freeReplyObject(r);
	return rc;
}

/* Creates f; STORE_EXISTS if a flag of that name is already there. */
int flag_store_create(struct flag_store *st, const struct flag *f, const char *actor, long long *version,
		      char *err, size_t errlen)
{
	struct buf json;
	buf_init(&json);
	flag_encode(f, &json);
	int rc = store_write(st, f->name, "", json.data, actor, "create", version, err, errlen);
	if (rc == STORE_CONFLICT) {
		snprintf(err, errlen, "flag '%s' already exists", f->name);
		rc = STORE_EXISTS;
	}
	buf_free(&json);
	return rc;
}

/*
 * Read-modify-write of one flag: reads it, lets fn edit a copy, and
 * writes the copy if it differs, retrying when another writer got there
 * first. action names the change in the audit stream. On STORE_OK,
 * *result (if not NULL) is the flag as written (caller frees) and
 * *version the new store version, or -1 when fn changed nothing.
 */
int flag_store_update(struct flag_store *st, const char *name, const char *action, flag_mutator fn, void *arg,
		      const char *actor, struct flag **result, long long *version, char *err, size_t errlen)
{
	int rc = STORE_CONFLICT;
	for (int attempt = 0; attempt < STORE_UPDATE_ATTEMPTS && rc == STORE_CONFLICT; attempt++) {
		char *old_json = NULL;
		struct flag *cur = NULL;
		struct buf json;
		buf_init(&json);
		if ((rc = store_get_raw(st, name, &old_json, err, errlen)) != STORE_OK)
			break;
		char why[FLAG_ERR_MAX];
		if ((cur = flag_decode(old_json, strlen(old_json), why, sizeof(why))) == NULL) {
			snprintf(err, errlen, "flag '%s' in Redis is invalid: %s", name, why);
			rc = STORE_INVALID;
		} else if ((rc = fn(cur, arg, err, errlen)) == STORE_OK) {
			flag_encode(cur, &json);
			*version = -1;
			if (strcmp(json.data, old_json) != 0)
				rc = store_write(st, name, old_json, json.data, actor, action, version, err, errlen);
		}
		if (rc == STORE_OK && result != NULL)
			*result = cur;
		else
			flag_free(cur);
		free(old_json);
		buf_free(&json);
	}
	return rc;
}

int flag_store_delete(struct flag_store *st, const char *name, const char *actor, long long *version,
		      char *err, size_t errlen)
{
	int rc = STORE_CONFLICT;
	for (int attempt = 0; attempt < STORE_UPDATE_ATTEMPTS && rc == STORE_CONFLICT; attempt++) {
		char *old_json = NULL;
		if ((rc = store_get_raw(st, name, &old_json, err, errlen)) != STORE_OK)
			break;
		rc = store_write(st, name, old_json, "", actor, "delete", version, err, errlen);
		free(old_json);
	}
	return rc;
}

/*
 * Adds ids to (or removes them from) cohort, as one audited change.
 * *changed is how many memberships actually changed (0 writes nothing).
 */
int flag_store_cohort_change(struct flag_store *st, const char *cohort, bool add, char *const *ids, size_t n,
			     const char *actor, long long *changed, char *err, size_t errlen)
{
	struct buf action;
	buf_init(&action);
	buf_printf(&action, "%s %zu id%s:", add ? "add" : "remove", n, n == 1 ? "" : "s");
	for (size_t i = 0; i < n && i < 10; i++)
		buf_printf(&action, " %s", ids[i]);
	if (n > 10)
		buf_puts(&action, " ...");
	/* The script's ARGV: prefix, cohort, op, actor, action, id... */
	size_t argc = 8 + n;
	const char **argv = xcalloc(argc, sizeof(char *));
	argv[0] = "EVAL", argv[1] = store_cohort_script, argv[2] = "0", argv[3] = st->prefix;
	argv[4] = cohort, argv[5] = add ? "add" : "remove", argv[6] = actor, argv[7] = action.data;
	for (size_t i = 0; i < n; i++)
		argv[8 + i] = ids[i];
	redisReply *r = redisCommandArgv(st->c, (int)argc, argv, NULL);
	int rc = flag_store_reply_status(st, r, err, errlen);
	if (rc == STORE_OK)
		*changed = r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? r->element[0]->integer : 0;
	if (r)
		freeReplyObject(r);
	free(argv);
	buf_free(&action);
	return rc;
}

/* The members of cohort, sorted, into *out (caller frees). */
int flag_store_cohort_members(struct flag_store *st, const char *cohort, struct flag_idlist *out, char *err,
			      size_t errlen)
{
	redisReply *r = redisCommand(st->c, "SORT %s:cohort:%s ALPHA", st->prefix, cohort);
	int rc = flag_store_reply_status(st, r, err, errlen);
	if (rc == STORE_OK)
		reply_to_idlist(r, out);
	if (r)
		freeReplyObject(r);
	return rc;
}

static const char *entry_field(const redisReply *fields, const char *name)
{
	for (size_t i = 0; i + 1 < fields->elements; i += 2)
		if (strcmp(fields->element[i]->str, name) == 0)
			return fields->element[i + 1]->str;
	return "";
}

/*
 * Calls fn for the last `limit` audit entries about subject (a flag name,
 * or "cohort:NAME"), oldest first. Entries are borrowed for the call.
 */
int flag_store_history(struct flag_store *st, const char *subject, size_t limit, audit_visitor fn, void *arg,
		       char *err, size_t errlen)
{
	redisReply **pages = NULL;
	size_t npages = 0, found = 0;
	struct audit_entry *hits = xcalloc(limit + 1, sizeof(*hits));
	char end[64] = "+";
	int rc = STORE_OK;
	/* Newest first, a page at a time, until enough entries are found. */
	while (found < limit) {
		redisReply *r = redisCommand(st->c, "XREVRANGE %s:flags:audit %s - COUNT 500", st->prefix, end);
		if ((rc = flag_store_reply_status(st, r, err, errlen)) != STORE_OK) {
			if (r)
				freeReplyObject(r);
			break;
		}
		pages = xrealloc(pages, (npages + 1) * sizeof(*pages));
		pages[npages++] = r;
		for (size_t i = 0; i < r->elements && found < limit; i++) {
			const redisReply *id = r->element[i]->element[0], *fields = r->element[i]->element[1];
			if (strcmp(entry_field(fields, "subject"), subject) != 0)
				continue;
			struct audit_entry *e = &hits[found++];
			e->time_ms = strtoll(id->str, NULL, 10);
			e->subject = entry_field(fields, "subject");
			e->actor = entry_field(fields, "actor");
			e->action = entry_field(fields, "action");
			e->old_json = entry_field(fields, "old");
			e->new_json = entry_field(fields, "new");
			e->version = strtoll(entry_field(fields, "version"), NULL, 10);
		}
		if (r->elements < 500)
			break;
		snprintf(end, sizeof(end), "(%s", r->element[r->elements - 1]->element[0]->str);
	}
	if (rc == STORE_OK)
		for (size_t i = found; i > 0; i--)
			fn(&hits[i - 1], arg);
	for (size_t i = 0; i < npages; i++)
		freeReplyObject(pages[i]);
	free(pages);
	free(hits);
	return rc;
}
