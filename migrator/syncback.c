/*
 * syncback.c - `cutover-migrate syncback`: the user service's change
 * events, applied to the legacy users collection, so that the monolith's
 * own joins keep seeing current users while the service is the source
 * of truth. Keys and the event format: docs/design.md, "Sync-back".
 *
 * The service XADDs one entry per change to its events stream: type
 * (USER_CREATED, USER_UPDATED, USER_DELETED), user, version (the user's,
 * moved up by every change), fields (JSON: the changed fields, the whole
 * user for a create) and at. Each turn reads a batch as a member of the
 * group "syncback" (consumer.c) and takes it through:
 *
 *   1. parse: an entry without a known type, a usable user id, a
 *      positive version or a JSON object of fields (after the mapping,
 *      top-level names without '.' or a leading '$') is dead-lettered,
 *      reason malformed;
 *   2. merge the events of each user, so one user is written once a
 *      batch and its create and updates cannot race each other;
 *   3. one unordered bulk write to legacy, with the configured write
 *      concern, each changed field its own update guarded by the version
 *      that last set that field, kept in the user's state field:
 *
 *        {_id, "S.del": {$exists: false},
 *         $or: [{"S.f.F": {$exists: false}}, {"S.f.F": {$lt: v}}]}
 *        -> {$set: {F: value, "S.f.F": v}, $max: {"S.v": v}}
 *
 *      so a repeated event, or an older one arriving late, changes
 *      nothing, and two updates of different fields arriving out of
 *      order both land. A create upserts; an update of a user legacy
 *      lacks (its create not applied yet) is left pending for a retry.
 *      A delete sets the tombstone field and S.del (deletes =
 *      tombstone), after which nothing older applies; or deletes the
 *      document (deletes = delete) after recording the version in
 *      <p>:syncback:deleted, which then stops older events instead;
 *   4. Redis, pipelined, as batch.c does it for the worker too:
 *      attempts of users that failed; each created user recorded as
 *      migrated and seen (its reads may go to the service at once: it
 *      lives there); dead-letters; and only then XACK of the entries
 *      whose outcome is durable, every command of its record accepted.
 *      The stream is the service's: entries are acked, not deleted.
 *
 * A write the legacy server could not take at the write concern (or at
 * all) is an outage: the batch waits and is written again, no attempt
 * counted. A write error on one user (a validation rule, say) counts an
 * attempt for that user; after retry.attempts it is dead-lettered.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "migrator/migrator.h"

#define GROUP "syncback"
#define DUPLICATE_KEY 11000
#define VERSION_MAX 9007199254740991LL /* 2^53 - 1: exact in any JSON reader */
#define LAG_EVERY_US 1000000
#define FIELD_KEY_MAX 300 /* "S.f.F" */

enum event_type { EVENT_CREATED, EVENT_UPDATED, EVENT_DELETED };
static const char *const event_type_names[] = { "USER_CREATED", "USER_UPDATED", "USER_DELETED" };

/* One stream entry of a batch. */
struct event {
	struct batch_entry base; /* base.d: its change's */
	enum event_type type;
	int64_t version;
	bson_t *fields; /* mapped to legacy names; NULL for a delete */
	char malformed[DELIVERY_ERROR_MAX]; /* why it is unusable, or "" */
	const char *reason;                 /* its dead-letter reason */
};

/* One field as a user's events of the batch leave it. */
struct field_change {
	const char *name;    /* in doc */
	const bson_t *doc;   /* the fields of the event that set it last */
	int64_t version;
};

/* The events of one user in a batch, merged. */
struct change {
	struct delivery d; /* first: batch.c's users are changes */
	int64_t version;   /* the highest */
	bool created;
	bool deleted;
	struct field_change *fields;
	size_t nfields;
	bool stale;      /* deleted at a later version (either deletes mode): not recorded again */
};

struct syncback {
	const struct migrate_config *cfg;
	const struct syncback_config *sb;
	struct batch_loop loop; /* its consumer, q, is sync-back's */
	struct legacy *legacy; /* written with its pool, read with legacy_load */
	mongoc_write_concern_t *wc;
	char *dead_key, *attempts_key, *deleted_key, *migrated_key, *seen_key, *changed_channel;
	int64_t next_lag_us;
};

static struct event *event_at(const struct batch *b, size_t i)
{
	return (struct event *)batch_entry_at(b, i);
}

static struct change *change_at(const struct batch *b, size_t i)
{
	return (struct change *)b->users[i];
}

/* ---- 1. parse ------------------------------------------------------------ */

/* The value of field name among an entry's fields, or NULL. */
static const redisReply *entry_field(const redisReply *fields, const char *name)
{
	size_t len = strlen(name);
	for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2) {
		const redisReply *k = fields->element[i], *v = fields->element[i + 1];
		if (k->type == REDIS_REPLY_STRING && k->len == len && memcmp(k->str, name, len) == 0)
			return v->type == REDIS_REPLY_STRING ? v : NULL;
	}
	return NULL;
}

/* Whether the mapped fields can be written as they are: top-level names
 * that are not _id-only, the state or tombstone field, nor paths. */
static int check_field_names(const struct syncback_config *sb, const bson_t *doc, char *why, size_t whylen)
{
	bson_iter_t it;
	bson_iter_init(&it, doc);
	while (bson_iter_next(&it)) {
		const char *k = bson_iter_key(&it);
		if (mapping_field_check(k, why, whylen) < 0)
			return -1;
		if (strcmp(k, sb->state_field) == 0 || strcmp(k, sb->tombstone_field) == 0) {
			snprintf(why, whylen, "field '%s' is sync-back's own", k);
			return -1;
		}
	}
	return 0;
}

/* The fields JSON of e, checked and mapped. Returns 0, or -1 with
 * e->malformed and e->reason set. */
static int parse_fields(const struct syncback_config *sb, struct event *e, const redisReply *text)
{
	bson_error_t error;
	char why[DELIVERY_ERROR_MAX];
	size_t i = 0;
	while (text && i < text->len && (text->str[i] == ' ' || text->str[i] == '\t' || text->str[i] == '\n'))
		i++;
	if (text == NULL || i == text->len || text->str[i] != '{') {
		snprintf(e->malformed, sizeof(e->malformed), "fields is not a JSON object");
		return -1;
	}
	bson_t *raw = bson_new_from_json((const uint8_t *)text->str, (ssize_t)text->len, &error);
	if (raw == NULL) {
		snprintf(e->malformed, sizeof(e->malformed), "fields is not JSON: %.200s", error.message);
		return -1;
	}
	e->fields = bson_new();
	int rc = mapping_apply(&sb->mapping, raw, e->fields, why, sizeof(why));
	bson_destroy(raw);
	if (rc < 0) {
		e->reason = "mapping";
		snprintf(e->malformed, sizeof(e->malformed), "%s", why);
		return -1;
	}
	if (check_field_names(sb, e->fields, why, sizeof(why)) < 0) {
		snprintf(e->malformed, sizeof(e->malformed), "%s", why);
		return -1;
	}
	return 0;
}

/* Type, version and fields of e; the user is read already. */
static void parse_event(const struct syncback_config *sb, struct event *e, const redisReply *fields)
{
	const redisReply *type = entry_field(fields, "type"), *version = entry_field(fields, "version");
	int t;
	for (t = 0; type && t < 3; t++)
		if (strcmp(type->str, event_type_names[t]) == 0)
			break;
	if (type == NULL || t == 3) {
		snprintf(e->malformed, sizeof(e->malformed), "type is not USER_CREATED, USER_UPDATED or USER_DELETED");
		return;
	}
	e->type = (enum event_type)t;
	char *end = NULL;
	long long v = version ? strtoll(version->str, &end, 10) : 0;
	if (version == NULL || end == version->str || *end != '\0' || v < 1 || v > VERSION_MAX) {
		snprintf(e->malformed, sizeof(e->malformed), "version is not a whole number from 1 to 2^53 - 1");
		return;
	}
	e->version = v;
	if (e->type != EVENT_DELETED)
		parse_fields(sb, e, entry_field(fields, "fields"));
}

/* batch_ops take: the event, unless the user field is unusable (why). */
static void take_event(void *ctx, struct batch_entry *entry, const redisReply *fields, const char *why)
{
	const struct syncback *s = ctx;
	struct event *e = (struct event *)entry;
	e->reason = "malformed";
	if (why != NULL)
		snprintf(e->malformed, sizeof(e->malformed), "user: %s", why);
	else
		parse_event(s->sb, e, fields);
}

/* ---- 2. merge ------------------------------------------------------------ */

static int compare_events(const void *a, const void *b)
{
	const struct event *x = *(struct event *const *)a, *y = *(struct event *const *)b;
	int c = strcmp(x->base.user, y->base.user);
	return c != 0 ? c : (x->version > y->version) - (x->version < y->version);
}

/* Folds e into c: a field's value is the one of the latest event. */
static void merge_event(struct change *c, const struct event *e)
{
	bson_iter_t it;
	c->version = e->version;
	c->created = c->created || e->type == EVENT_CREATED;
	c->deleted = c->deleted || e->type == EVENT_DELETED;
	if (e->fields == NULL || !bson_iter_init(&it, e->fields))
		return;
	while (bson_iter_next(&it)) {
		const char *name = bson_iter_key(&it);
		size_t k;
		if (strcmp(name, "_id") == 0)
			continue;
		for (k = 0; k < c->nfields && strcmp(c->fields[k].name, name) != 0; k++)
			;
		if (k == c->nfields)
			c->fields = xrealloc(c->fields, ++c->nfields * sizeof(*c->fields));
		c->fields[k] = (struct field_change){ name, e->fields, e->version };
	}
}

/* One change per user of the well-formed events, in version order. */
static void collect_changes(struct batch *b)
{
	struct event **sorted = xcalloc(b->nentries + 1, sizeof(*sorted));
	size_t n = 0;
	for (size_t i = 0; i < b->nentries; i++)
		if (event_at(b, i)->malformed[0] == '\0')
			sorted[n++] = event_at(b, i);
	qsort(sorted, n, sizeof(*sorted), compare_events);
	b->users = xcalloc(n + 1, sizeof(*b->users));
	for (size_t i = 0; i < n; i++) {
		if (i == 0 || strcmp(sorted[i - 1]->base.user, sorted[i]->base.user) != 0) {
			struct change *c = xcalloc(1, sizeof(*c));
			c->d.user = xstrdup(sorted[i]->base.user);
			b->users[b->nusers++] = &c->d;
		}
		sorted[i]->base.d = b->users[b->nusers - 1];
		merge_event(change_at(b, b->nusers - 1), sorted[i]);
	}
	free(sorted);
}

/* batch_ops clear: the events' fields and the changes' field lists. */
static void clear_batch(struct batch *b)
{
	for (size_t i = 0; i < b->nentries; i++)
		if (event_at(b, i)->fields)
			bson_destroy(event_at(b, i)->fields);
	for (size_t i = 0; i < b->nusers; i++)
		free(change_at(b, i)->fields);
}

/* ---- 3. legacy ----------------------------------------------------------- */

/* "S.f.F", "S.del" or "S.v" into key. */
static const char *state_key(const struct syncback *s, const char *part, const char *field, char key[FIELD_KEY_MAX])
{
	snprintf(key, FIELD_KEY_MAX, "%s.%s%s%s", s->sb->state_field, part, field ? "." : "", field ? field : "");
	return key;
}

/* {_id: c's id, "S.del": {$exists: false}}, and the field's guard when
 * field is not NULL. */
static void build_guard(const struct syncback *s, const struct change *c, const char *field, int64_t version,
			bson_t *filter)
{
	char key[FIELD_KEY_MAX];
	bson_t cond, or, alt;
	legacy_append_id(filter, "_id", c->d.user, strlen(c->d.user), s->cfg->id_type);
	BSON_APPEND_DOCUMENT_BEGIN(filter, state_key(s, "del", NULL, key), &cond);
	BSON_APPEND_BOOL(&cond, "$exists", false);
	bson_append_document_end(filter, &cond);
	if (field == NULL)
		return;
	state_key(s, "f", field, key);
	BSON_APPEND_ARRAY_BEGIN(filter, "$or", &or);
	BSON_APPEND_DOCUMENT_BEGIN(&or, "0", &alt);
	BSON_APPEND_DOCUMENT_BEGIN(&alt, key, &cond);
	BSON_APPEND_BOOL(&cond, "$exists", false);
	bson_append_document_end(&alt, &cond);
	bson_append_document_end(&or, &alt);
	BSON_APPEND_DOCUMENT_BEGIN(&or, "1", &alt);
	BSON_APPEND_DOCUMENT_BEGIN(&alt, key, &cond);
	BSON_APPEND_INT64(&cond, "$lt", version);
	bson_append_document_end(&alt, &cond);
	bson_append_document_end(&or, &alt);
	bson_append_array_end(filter, &or);
}

/* {$set: {F: value, "S.f.F": v}, $max: {"S.v": v}} for a field; without
 * one, the $max alone (a create with no fields still creates). */
static void build_field_update(const struct syncback *s, const struct change *c, const struct field_change *f,
			       bson_t *update)
{
	char key[FIELD_KEY_MAX];
	bson_t set, max;
	bson_iter_t value;
	if (f != NULL && bson_iter_init_find(&value, f->doc, f->name)) {
		BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
		bson_append_iter(&set, f->name, -1, &value);
		BSON_APPEND_INT64(&set, state_key(s, "f", f->name, key), f->version);
		bson_append_document_end(update, &set);
	}
	BSON_APPEND_DOCUMENT_BEGIN(update, "$max", &max);
	BSON_APPEND_INT64(&max, state_key(s, "v", NULL, key), c->version);
	bson_append_document_end(update, &max);
}

/* The tombstone: {$set: {T: true, "S.del": v}, $max: {"S.v": v}}. */
static void build_tombstone(const struct syncback *s, const struct change *c, bson_t *update)
{
	char key[FIELD_KEY_MAX];
	bson_t set, max;
	BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
	BSON_APPEND_BOOL(&set, s->sb->tombstone_field, true);
	BSON_APPEND_INT64(&set, state_key(s, "del", NULL, key), c->version);
	bson_append_document_end(update, &set);
	BSON_APPEND_DOCUMENT_BEGIN(update, "$max", &max);
	BSON_APPEND_INT64(&max, state_key(s, "v", NULL, key), c->version);
	bson_append_document_end(update, &max);
}

/* One operation of a bulk: whose, and which field (-1: none). */
struct op {
	struct change *c;
	long field;
	bool upsert;
	bool tombstone;
	bool remove;
};

struct bulk {
	struct op *ops;
	size_t nops;
};

static void add_op(struct bulk *b, struct change *c, long field, bool upsert, bool tombstone, bool remove)
{
	b->ops = xrealloc(b->ops, (b->nops + 1) * sizeof(*b->ops));
	b->ops[b->nops++] = (struct op){ c, field, upsert, tombstone, remove };
}

/* The operations of the changes still undecided. */
static void plan(const struct syncback *s, const struct batch *b, struct bulk *out)
{
	for (size_t i = 0; i < b->nusers; i++) {
		struct change *c = change_at(b, i);
		if (c->d.outcome != OUTCOME_NONE)
			continue;
		if (c->deleted && s->sb->deletes == SYNCBACK_DELETE) {
			add_op(out, c, -1, false, false, true);
			continue;
		}
		for (size_t k = 0; k < c->nfields; k++)
			add_op(out, c, (long)k, c->created, false, false);
		if (c->nfields == 0 && !c->deleted)
			add_op(out, c, -1, c->created, false, false);
		/* Upserted: a user deleted in the service before legacy heard of
		 * it still needs its tombstone, or a late create would bring it
		 * back. */
		if (c->deleted)
			add_op(out, c, -1, true, true, false);
	}
}

/* Appends op to bulk. Returns false with error when libmongoc refuses
 * the document (a field value it will not store). */
static bool append_op(const struct syncback *s, mongoc_bulk_operation_t *bulk, const struct op *op,
		      bson_error_t *error)
{
	bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, opts = BSON_INITIALIZER;
	const struct field_change *f = op->field >= 0 ? &op->c->fields[op->field] : NULL;
	bool ok;
	if (op->remove) {
		legacy_append_id(&filter, "_id", op->c->d.user, strlen(op->c->d.user), s->cfg->id_type);
		ok = mongoc_bulk_operation_remove_one_with_opts(bulk, &filter, NULL, error);
	} else {
		build_guard(s, op->c, f ? f->name : NULL, f ? f->version : 0, &filter);
		if (op->tombstone)
			build_tombstone(s, op->c, &update);
		else
			build_field_update(s, op->c, f, &update);
		BSON_APPEND_BOOL(&opts, "upsert", op->upsert);
		ok = mongoc_bulk_operation_update_one_with_opts(bulk, &filter, &update, &opts, error);
	}
	bson_destroy(&filter);
	bson_destroy(&update);
	bson_destroy(&opts);
	return ok;
}

/* What a write error says about its operation. */
static void apply_write_error(const bson_t *write_error, void *arg)
{
	struct bulk *retry = ((void **)arg)[0];
	const struct bulk *sent = ((void **)arg)[1];
	int64_t k = mongo_write_error_index(write_error);
	if (k < 0 || (uint64_t)k >= sent->nops)
		return;
	const struct op *op = &sent->ops[k];
	if (mongo_duplicate_on_id(write_error)) {
		/* The user's document exists: the guard refused (an older
		 * event), or another writer inserted it first. Without the
		 * upsert the guard alone decides. */
		if (op->upsert && !op->tombstone)
			add_op(retry, op->c, op->field, false, false, false);
		return;
	}
	char text[DELIVERY_ERROR_MAX];
	mongo_write_error_text(write_error, text, sizeof(text));
	if (op->c->d.outcome == OUTCOME_NONE)
		delivery_set(&op->c->d, OUTCOME_RETRY, "attempts", "legacy refused the write: %s", text);
}

/*
 * Runs the operations of plan in one unordered bulk. Duplicate key
 * errors of upserts are collected into retry. Returns 0, or -1 with err
 * when the bulk as a whole failed (unreachable, or the write concern not
 * met): an outage, for which the batch is written again.
 */
static int run_bulk(struct syncback *s, mongoc_collection_t *coll, struct bulk *plan, struct bulk *retry,
		    char *err, size_t errlen)
{
	bson_t opts = BSON_INITIALIZER, reply;
	bson_error_t error;
	size_t nsent = 0;
	BSON_APPEND_BOOL(&opts, "ordered", false);
	mongoc_write_concern_append(s->wc, &opts);
	mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(coll, &opts);
	struct bulk sent = { 0 };
	for (size_t k = 0; k < plan->nops; k++) {
		if (!append_op(s, bulk, &plan->ops[k], &error)) {
			delivery_set(&plan->ops[k].c->d, OUTCOME_DEAD, "malformed",
				     "not a document legacy can store: %s", error.message);
			continue;
		}
		add_op(&sent, plan->ops[k].c, plan->ops[k].field, plan->ops[k].upsert, plan->ops[k].tombstone,
		       plan->ops[k].remove);
		nsent++;
	}
	int rc = 0;
	if (nsent > 0 && !mongoc_bulk_operation_execute(bulk, &reply, &error)) {
		void *arg[2] = { retry, &sent };
		int nerrors = mongo_each_write_error(&reply, apply_write_error, arg);
		if (nerrors == 0 || mongo_write_concern_failed(&reply)) {
			snprintf(err, errlen, "%s", error.message);
			rc = -1;
		}
	}
	if (nsent > 0)
		bson_destroy(&reply);
	free(sent.ops);
	mongoc_bulk_operation_destroy(bulk);
	bson_destroy(&opts);
	return rc;
}

/* Whether check_present looks c's user up: an update only (its user
 * must exist), or with tombstones a create (a tombstone there means the
 * create came after the delete). */
static bool to_check(const struct syncback *s, const struct change *c)
{
	return c->d.outcome == OUTCOME_NONE && !c->deleted &&
	       (!c->created || s->sb->deletes == SYNCBACK_TOMBSTONE);
}

/* Whether the legacy document doc carries sync-back's tombstone. */
static bool tombstoned(const struct syncback *s, const bson_t *doc)
{
	char key[FIELD_KEY_MAX];
	bson_iter_t it, del;
	bson_iter_init(&it, doc);
	return bson_iter_find_descendant(&it, state_key(s, "del", NULL, key), &del);
}

/* After the writes, the users of to_check, looked up with one find
 * (legacy_load): an update-only change whose user legacy lacks did
 * nothing and becomes a retry; a create whose user was tombstoned is
 * stale (not recorded as migrated again). Returns 0, or -1 with err when
 * the find failed. */
static int check_present(struct syncback *s, struct batch *b, char *err, size_t errlen)
{
	struct delivery **items = xcalloc(b->nusers + 1, sizeof(*items));
	size_t n = 0;
	for (size_t i = 0; i < b->nusers; i++) {
		struct change *c = change_at(b, i);
		if (!to_check(s, c))
			continue;
		if (c->d.legacy) { /* from an attempt an outage cut short */
			bson_destroy(c->d.legacy);
			c->d.legacy = NULL;
		}
		items[n++] = &c->d;
	}
	int rc = n > 0 ? legacy_load(s->legacy, items, n, err, errlen) : 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct change *c = (struct change *)items[i];
		if (c->created) {
			c->stale = c->d.legacy && tombstoned(s, c->d.legacy);
		} else if (c->d.legacy == NULL) {
			delivery_set(&c->d, OUTCOME_RETRY, "not-in-legacy",
				     "no user %s in legacy: its USER_CREATED not applied yet, or deleted there", c->d.user);
			metrics_count(COUNT_SB_NOT_IN_LEGACY, 1);
		}
	}
	free(items);
	return rc;
}

/* Step 3 once: the bulk, the second bulk for duplicate keys, the check.
 * Returns -1 with err on an outage. */
static int write_legacy_once(struct syncback *s, struct batch *b, char *err, size_t errlen)
{
	mongoc_client_t *client = mongoc_client_pool_pop(legacy_pool(s->legacy));
	mongoc_collection_t *coll =
		mongoc_client_get_collection(client, s->cfg->legacy.database, s->cfg->legacy.collection);
	struct bulk ops = { 0 }, again = { 0 }, unused = { 0 };
	plan(s, b, &ops);
	int rc = run_bulk(s, coll, &ops, &again, err, errlen);
	if (rc == 0 && again.nops > 0)
		rc = run_bulk(s, coll, &again, &unused, err, errlen);
	if (rc == 0)
		rc = check_present(s, b, err, errlen);
	free(ops.ops);
	free(again.ops);
	free(unused.ops);
	mongoc_collection_destroy(coll);
	mongoc_client_pool_push(legacy_pool(s->legacy), client);
	return rc;
}

/* Step 3, waiting out outages: each undecided change ends delivered
 * (written, or already there), retry or dead. Returns -1 if stopped. */
static int write_legacy(struct syncback *s, struct batch *b)
{
	char err[MIGRATE_ERR_MAX];
	int outages = 0;
	while (write_legacy_once(s, b, err, sizeof(err)) < 0) {
		log_warn("legacy: %s; %zu users wait, no attempt counted", err, b->nusers);
		metrics_count(COUNT_LEGACY_ERRORS, 1);
		metrics_error("legacy: %s", err);
		for (size_t i = 0; i < b->nusers; i++)
			if (b->users[i]->outcome == OUTCOME_RETRY)
				b->users[i]->outcome = OUTCOME_NONE;
		if (consumer_wait_outage(s->loop.q, &outages) < 0)
			return -1;
	}
	for (size_t i = 0; i < b->nusers; i++)
		if (b->users[i]->outcome == OUTCOME_NONE)
			delivery_set(b->users[i], OUTCOME_DELIVERED, NULL, "applied");
	return 0;
}

/* ---- Redis ---------------------------------------------------------------- */

/*
 * deletes = delete, before legacy: HMGET the deleted versions of the
 * batch's users (a change no newer than a recorded delete is stale: the
 * user is gone and must not come back), then HSET those deleted now,
 * so that the record exists before the document goes. Returns -1 when
 * the connection failed.
 */
static int check_deleted(struct syncback *s, struct batch *b)
{
	struct command c = { 0 };
	size_t ndeleted = 0;
	if (s->sb->deletes != SYNCBACK_DELETE || b->nusers == 0)
		return 0;
	const char **argv = xcalloc(b->nusers + 2, sizeof(*argv));
	argv[0] = "HMGET";
	argv[1] = s->deleted_key;
	for (size_t i = 0; i < b->nusers; i++)
		argv[i + 2] = b->users[i]->user;
	redisAppendCommandArgv(consumer_redis(s->loop.q), (int)b->nusers + 2, argv, NULL);
	free(argv);
	for (size_t i = 0; i < b->nusers; i++) {
		char v[24];
		if (!change_at(b, i)->deleted)
			continue;
		snprintf(v, sizeof(v), "%" PRId64, change_at(b, i)->version);
		cmd_strs(&c, "HSET", s->deleted_key, b->users[i]->user, v, NULL);
		cmd_send(s->loop.q, &c);
		ndeleted++;
	}
	redisReply *r;
	if (consumer_next_reply(s->loop.q, "HMGET", &r) < 0)
		return -1;
	for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && i < b->nusers; i++) {
		const redisReply *v = r->element[i];
		if (v->type == REDIS_REPLY_STRING && strtoll(v->str, NULL, 10) >= change_at(b, i)->version) {
			delivery_set(b->users[i], OUTCOME_DELIVERED, NULL, "deleted at version %s already", v->str);
			change_at(b, i)->stale = true;
		}
	}
	if (r->type == REDIS_REPLY_ERROR)
		consumer_refused(s->loop.q, "HMGET", r);
	bool refused = r->type != REDIS_REPLY_ARRAY;
	freeReplyObject(r);
	while (ndeleted-- > 0) {
		if (consumer_next_reply(s->loop.q, "HSET", &r) < 0)
			return -1;
		refused = refused || r->type == REDIS_REPLY_ERROR;
		freeReplyObject(r);
	}
	return refused ? -1 : 0;
}

/* XADD of one event's dead-letter entry. */
static void send_dead_letter(struct syncback *s, const struct event *e, const char *reason, const char *error,
			     long long attempts, const char *at)
{
	struct command c = { 0 };
	char version[24], count[24];
	snprintf(version, sizeof(version), "%" PRId64, e->version);
	snprintf(count, sizeof(count), "%lld", attempts);
	cmd_strs(&c, "XADD", s->dead_key, "*", "entry", e->base.id, "user", NULL);
	cmd_arg(&c, e->base.user ? e->base.user : "", e->base.user_len);
	cmd_strs(&c, "type", e->malformed[0] && e->version == 0 ? "" : event_type_names[e->type], "version", version,
		 "reason", reason, "error", error, "attempts", count, "at", at, NULL);
	cmd_send(s->loop.q, &c);
}

/* batch_ops send_record: HSET migrated, SADD seen and PUBLISH for a
 * created user; a dead-letter per event of a dead one. Returns how many
 * commands it sent. */
static int send_change_record(void *ctx, const struct batch *b, const struct delivery *d, const char *at)
{
	struct syncback *s = ctx;
	const struct change *ch = (const struct change *)d;
	struct command c = { 0 };
	int n = 0;
	if (d->outcome == OUTCOME_DELIVERED && ch->created && !ch->deleted && !ch->stale) {
		cmd_strs(&c, "HSET", s->migrated_key, d->user, at, NULL);
		cmd_send(s->loop.q, &c);
		cmd_strs(&c, "SADD", s->seen_key, d->user, NULL);
		cmd_send(s->loop.q, &c);
		cmd_strs(&c, "PUBLISH", s->changed_channel, d->user, NULL);
		cmd_send(s->loop.q, &c);
		n = 3;
	}
	for (size_t i = 0; d->outcome == OUTCOME_DEAD && i < b->nentries; i++) {
		if (event_at(b, i)->base.d == d) {
			send_dead_letter(s, event_at(b, i), d->reason, d->error, d->attempts, at);
			n++;
		}
	}
	return n;
}

/* batch_ops send_dead_entry: a malformed event's dead-letter. */
static void send_dead_event(void *ctx, const struct batch_entry *entry, const char *at)
{
	const struct event *e = (const struct event *)entry;
	send_dead_letter(ctx, e, e->reason, e->malformed, 0, at);
}

/* ---- the loop --------------------------------------------------------------- */

/* A log line and counters for what Redis now holds. */
static void report(const struct syncback *s, const struct batch *b)
{
	char text[LOG_EXCERPT + 4];
	for (size_t i = 0; i < b->nentries; i++) {
		const struct event *e = event_at(b, i);
		if (e->malformed[0] == '\0' || !e->base.recorded)
			continue;
		user_excerpt(e->base.user ? e->base.user : "", e->base.user_len, text);
		log_warn("event %s of %s (user '%s'): %s: dead-lettered (%s)", e->base.id, s->sb->stream, text,
			 e->malformed, e->reason);
		metrics_error("event %s: %s", e->base.id, e->malformed);
		metrics_count(COUNT_DEAD, 1);
		metrics_count(strcmp(e->reason, "mapping") == 0 ? COUNT_MAPPING : COUNT_MALFORMED, 1);
	}
	for (size_t i = 0; i < b->nusers; i++) {
		const struct change *c = change_at(b, i);
		if (c->d.outcome == OUTCOME_DELIVERED && c->d.recorded) {
			log_debug("user %s: version %" PRId64 " in legacy (%s)", c->d.user, c->version, c->d.error);
			metrics_count(COUNT_SB_APPLIED, 1);
			metrics_count(COUNT_SB_CREATED, c->created && !c->deleted && !c->stale);
			metrics_count(COUNT_SB_DELETED, c->deleted);
		} else if (c->d.outcome == OUTCOME_DEAD && c->d.recorded) {
			log_error("user %s: events up to version %" PRId64 " dead-lettered after %lld attempts: %s",
				  c->d.user, c->version, c->d.attempts, c->d.error);
			metrics_error("user %s: %s", c->d.user, c->d.error);
			metrics_count(COUNT_DEAD, 1);
			metrics_count(COUNT_ATTEMPTS, 1);
		} else if (c->d.outcome == OUTCOME_RETRY) {
			log_warn("user %s: attempt %lld of %d failed, left pending: %s", c->d.user, c->d.attempts,
				 s->cfg->attempts, c->d.error);
			metrics_error("user %s: %s", c->d.user, c->d.error);
			metrics_count(COUNT_FAILED, 1);
			metrics_count(COUNT_SB_WRITE_ERRORS, strcmp(c->d.reason, "attempts") == 0);
		}
	}
}

/* batch_ops process: steps 2 to 4 (see the top of this file). */
static int process(void *ctx, struct batch *b)
{
	struct syncback *s = ctx;
	int outages = 0;
	collect_changes(b);
	while (consumer_ready(s->loop.q) < 0 || check_deleted(s, b) < 0)
		if (consumer_wait_outage(s->loop.q, &outages) < 0)
			return -1;
	if (write_legacy(s, b) < 0 || batch_record(&s->loop, b) < 0) {
		log_info("stopping during an outage: the events not acked stay pending");
		return -1;
	}
	report(s, b);
	return 0;
}

static const struct batch_ops syncback_batches = {
	.take = take_event,
	.entry_size = sizeof(struct event),
	.process = process,
	.strict = true,
	.send_record = send_change_record,
	.send_dead_entry = send_dead_event,
	.clear = clear_batch,
};

/* The age in ms of the entry id, against Redis's clock now_ms (which
 * stamped it). */
static unsigned long long id_age_ms(const char *id, long long now_ms)
{
	long long ms = strtoll(id, NULL, 10);
	return now_ms > ms ? (unsigned long long)(now_ms - ms) : 0;
}

/* The value of name in an XINFO map reply, or NULL. */
static const redisReply *info_get(const redisReply *map, const char *name)
{
	for (size_t k = 0; map->type == REDIS_REPLY_ARRAY && k + 1 < map->elements; k += 2)
		if (map->element[k]->type == REDIS_REPLY_STRING && strcmp(map->element[k]->str, name) == 0)
			return map->element[k + 1];
	return NULL;
}

/*
 * Once a second, into the gauges: events not yet read by the group (its
 * lag, Redis 7), read and not acked (pending), and the age of the
 * oldest of either: the smallest pending id, else the first entry after
 * the group's last-delivered-id. Errors only skip a measurement.
 */
static void measure_lag(struct syncback *s)
{
	if (clock_monotonic_us() < s->next_lag_us || consumer_ready(s->loop.q) < 0)
		return;
	s->next_lag_us = clock_monotonic_us() + LAG_EVERY_US;
	redisContext *redis = consumer_redis(s->loop.q);
	redisReply *time = redisCommand(redis, "TIME");
	redisReply *groups = redisCommand(redis, "XINFO GROUPS %s", s->sb->stream);
	redisReply *pending = redisCommand(redis, "XPENDING %s %s", s->sb->stream, GROUP);
	long long now = time && time->type == REDIS_REPLY_ARRAY && time->elements == 2
				? strtoll(time->element[0]->str, NULL, 10) * 1000 + strtoll(time->element[1]->str, NULL, 10) / 1000
				: clock_realtime_us() / 1000;
	unsigned long long oldest = 0;
	for (size_t g = 0; groups && groups->type == REDIS_REPLY_ARRAY && g < groups->elements; g++) {
		const redisReply *name = info_get(groups->element[g], "name");
		const redisReply *lag = info_get(groups->element[g], "lag");
		const redisReply *last = info_get(groups->element[g], "last-delivered-id");
		if (name == NULL || name->type != REDIS_REPLY_STRING || strcmp(name->str, GROUP) != 0)
			continue;
		metrics_set(COUNT_SB_LAG, lag && lag->type == REDIS_REPLY_INTEGER ? (unsigned long long)lag->integer : 0);
		redisReply *next = lag && lag->type == REDIS_REPLY_INTEGER && lag->integer > 0 && last
					   ? redisCommand(redis, "XRANGE %s (%s + COUNT 1", s->sb->stream, last->str)
					   : NULL;
		if (next && next->type == REDIS_REPLY_ARRAY && next->elements == 1)
			oldest = id_age_ms(next->element[0]->element[0]->str, now);
		if (next)
			freeReplyObject(next);
	}
	if (pending && pending->type == REDIS_REPLY_ARRAY && pending->elements >= 2 &&
	    pending->element[0]->type == REDIS_REPLY_INTEGER) {
		metrics_set(COUNT_SB_PENDING, (unsigned long long)pending->element[0]->integer);
		if (pending->element[1]->type == REDIS_REPLY_STRING)
			oldest = id_age_ms(pending->element[1]->str, now);
	}
	metrics_set(COUNT_SB_OLDEST_MS, oldest);
	if (time)
		freeReplyObject(time);
	if (groups)
		freeReplyObject(groups);
	if (pending)
		freeReplyObject(pending);
}

static char *key_of(const struct migrate_config *cfg, const char *suffix)
{
	struct buf k;
	buf_init(&k);
	buf_printf(&k, "%s:%s", cfg->redis_prefix, suffix);
	return buf_detach(&k);
}

static void syncback_free(struct syncback *s)
{
	if (s == NULL)
		return;
	consumer_free(s->loop.q);
	legacy_close(s->legacy);
	if (s->wc)
		mongoc_write_concern_destroy(s->wc);
	free(s->dead_key);
	free(s->attempts_key);
	free(s->deleted_key);
	free(s->migrated_key);
	free(s->seen_key);
	free(s->changed_channel);
	free(s);
}

static struct syncback *syncback_new(const struct migrate_config *cfg, const volatile sig_atomic_t *stop, char *err,
				     size_t errlen)
{
	struct syncback *s = xcalloc(1, sizeof(*s));
	struct consumer_options o;
	s->cfg = cfg;
	s->sb = &cfg->syncback;
	s->dead_key = key_of(cfg, "syncback:dead");
	s->attempts_key = key_of(cfg, "syncback:attempts");
	s->deleted_key = key_of(cfg, "syncback:deleted");
	s->migrated_key = key_of(cfg, "migrated");
	s->seen_key = key_of(cfg, "seen");
	s->changed_channel = key_of(cfg, "migrated:changed");
	consumer_options_init(&o, cfg, GROUP);
	o.streams[o.nstreams++] = s->sb->stream;
	s->loop = (struct batch_loop){ .ops = &syncback_batches, .ctx = s, .attempts_key = s->attempts_key,
				       .attempts = cfg->attempts };
	s->loop.q = consumer_new(cfg->redis_url, &o, stop, err, errlen);
	if (s->loop.q != NULL) {
		/* The find after the writes needs the ids and the tombstone only. */
		char del[FIELD_KEY_MAX];
		bson_t *projection = BCON_NEW("_id", BCON_INT32(1), state_key(s, "del", NULL, del), BCON_INT32(1));
		s->legacy = legacy_open_target(&cfg->legacy, cfg->id_type, projection, s->sb->wtimeout_ms + 5000, err,
					       errlen);
	}
	if (s->legacy == NULL) {
		syncback_free(s);
		return NULL;
	}
	s->wc = mongoc_write_concern_new();
	if (s->sb->w < 0)
		mongoc_write_concern_set_w(s->wc, MONGOC_WRITE_CONCERN_W_MAJORITY);
	else
		mongoc_write_concern_set_w(s->wc, s->sb->w);
	mongoc_write_concern_set_wtimeout_int64(s->wc, s->sb->wtimeout_ms);
	return s;
}

/*
 * Runs sync-back until *stop is set, then returns 0 with the batch in
 * hand finished; returns 1 when it cannot start (logged).
 */
int syncback_run(const struct migrate_config *cfg, const volatile sig_atomic_t *stop)
{
	char err[MIGRATE_ERR_MAX];
	const struct syncback_config *sb = &cfg->syncback;
	struct syncback *s = syncback_new(cfg, stop, err, sizeof(err));
	if (s == NULL || (sb->metrics_file && metrics_start(sb->metrics_file, syncback_counters, err, sizeof(err)) < 0)) {
		log_error("%s", err);
		syncback_free(s);
		return 1;
	}
	char w[16];
	snprintf(w, sizeof(w), "%d", sb->w);
	log_info("sync-back from %s into %s.%s: deletes %s, write concern %s, batch %d%s%s", sb->stream,
		 cfg->legacy.database, cfg->legacy.collection, sb->deletes == SYNCBACK_DELETE ? "delete" : "tombstone",
		 sb->w < 0 ? "majority" : w, cfg->batch,
		 sb->metrics_file ? ", metrics in " : "", sb->metrics_file ? sb->metrics_file : "");
	while (!*stop) {
		measure_lag(s);
		batch_turn(&s->loop);
	}
	log_info("stopped: %llu events processed, %llu users' changes applied, %llu dead-lettered",
		 metrics_get(COUNT_PROCESSED), metrics_get(COUNT_SB_APPLIED), metrics_get(COUNT_DEAD));
	metrics_stop();
	syncback_free(s);
	return 0;
}
