/*
 * sink_mongo.c - delivers users straight into the service's collection:
 * one unordered bulk write per batch, write concern majority, each user
 * a replacement upsert guarded by the version field:
 *
 *   {_id: id, $or: [{vf: {$lt: v}}, {vf: {$exists: false}}]}
 *
 * where vf is the version field's name after the mapping and v the
 * legacy document's value. When the service holds a newer or equal
 * version the filter matches nothing, the upsert tries to insert a
 * second document with that _id and fails with a duplicate key error on
 * the _id index: the service already has what we have, which counts as
 * delivered. A legacy document without the version field is older than
 * any versioned copy: its filter is {_id: id, vf: {$exists: false}}.
 * Without a version_field the upsert is plain: {_id: id}.
 *
 * A duplicate key on another unique index, any other write error, a
 * write concern error or a failed bulk (server unreachable) is a retry.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrator/migrator.h"

#define DUPLICATE_KEY 11000

struct sink_mongo {
	struct sink base;
	mongoc_client_pool_t *pool;
	const char *database;
	const char *collection;
	const char *version_field; /* legacy name, or NULL */
	const char *guard_field;   /* its name in the service */
	mongoc_write_concern_t *wc;
};

/* The guarded filter for d, into filter (initialized, empty). */
static void build_selector(const struct sink_mongo *m, const struct delivery *d, bson_t *filter)
{
	bson_iter_t id, version;
	bson_t cond, or, alt;
	bson_iter_init_find(&id, d->legacy, "_id");
	bson_append_iter(filter, "_id", 3, &id);
	if (m->version_field == NULL)
		return;
	if (!bson_iter_init_find(&version, d->legacy, m->version_field)) {
		BSON_APPEND_DOCUMENT_BEGIN(filter, m->guard_field, &cond);
		BSON_APPEND_BOOL(&cond, "$exists", false);
		bson_append_document_end(filter, &cond);
		return;
	}
	BSON_APPEND_ARRAY_BEGIN(filter, "$or", &or);
	BSON_APPEND_DOCUMENT_BEGIN(&or, "0", &alt);
	BSON_APPEND_DOCUMENT_BEGIN(&alt, m->guard_field, &cond);
	bson_append_iter(&cond, "$lt", 3, &version);
	bson_append_document_end(&alt, &cond);
	bson_append_document_end(&or, &alt);
	BSON_APPEND_DOCUMENT_BEGIN(&or, "1", &alt);
	BSON_APPEND_DOCUMENT_BEGIN(&alt, m->guard_field, &cond);
	BSON_APPEND_BOOL(&cond, "$exists", false);
	bson_append_document_end(&alt, &cond);
	bson_append_document_end(&or, &alt);
	bson_append_array_end(filter, &or);
}

/* Whether write_error is a duplicate key on the _id index: by its
 * keyPattern (MongoDB 4.2 and later), else by its message. */
bool mongo_duplicate_on_id(const bson_t *write_error)
{
	bson_iter_t it, key;
	if (!bson_iter_init_find(&it, write_error, "code") || !BSON_ITER_HOLDS_NUMBER(&it) ||
	    bson_iter_as_int64(&it) != DUPLICATE_KEY)
		return false;
	if (bson_iter_init_find(&it, write_error, "keyPattern") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
		bson_t pattern;
		uint32_t len;
		const uint8_t *data;
		bson_iter_document(&it, &len, &data);
		if (!bson_init_static(&pattern, data, len) || !bson_iter_init(&key, &pattern))
			return false;
		return bson_iter_next(&key) && strcmp(bson_iter_key(&key), "_id") == 0 && !bson_iter_next(&key);
	}
	uint32_t len;
	const char *msg = bson_iter_init_find(&it, write_error, "errmsg") && BSON_ITER_HOLDS_UTF8(&it)
				  ? bson_iter_utf8(&it, &len)
				  : "";
	return strstr(msg, "index: _id_ ") != NULL;
}

/* The index of the operation a write error is about, or -1. */
int64_t mongo_write_error_index(const bson_t *write_error)
{
	bson_iter_t it;
	return bson_iter_init_find(&it, write_error, "index") && BSON_ITER_HOLDS_NUMBER(&it) ? bson_iter_as_int64(&it)
											       : -1;
}

/* "write error CODE: MESSAGE". */
void mongo_write_error_text(const bson_t *write_error, char *out, size_t outlen)
{
	bson_iter_t it;
	int64_t code = 0;
	const char *msg = "write error";
	uint32_t len;
	if (bson_iter_init_find(&it, write_error, "code") && BSON_ITER_HOLDS_NUMBER(&it))
		code = bson_iter_as_int64(&it);
	if (bson_iter_init_find(&it, write_error, "errmsg") && BSON_ITER_HOLDS_UTF8(&it))
		msg = bson_iter_utf8(&it, &len);
	snprintf(out, outlen, "write error %" PRId64 ": %s", code, msg);
}

/* Calls fn for each of the reply's writeErrors. Returns how many. */
int mongo_each_write_error(const bson_t *reply, void (*fn)(const bson_t *write_error, void *arg), void *arg)
{
	bson_iter_t it, child;
	int n = 0;
	if (!bson_iter_init_find(&it, reply, "writeErrors") || !BSON_ITER_HOLDS_ARRAY(&it) ||
	    !bson_iter_recurse(&it, &child))
		return 0;
	while (bson_iter_next(&child)) {
		bson_t e;
		uint32_t len;
		const uint8_t *data;
		if (!BSON_ITER_HOLDS_DOCUMENT(&child))
			continue;
		bson_iter_document(&child, &len, &data);
		if (bson_init_static(&e, data, len)) {
			fn(&e, arg);
			n++;
		}
	}
	return n;
}

/* Whether the reply reports a write concern error. */
bool mongo_write_concern_failed(const bson_t *reply)
{
	bson_iter_t it, child;
	return bson_iter_init_find(&it, reply, "writeConcernErrors") && BSON_ITER_HOLDS_ARRAY(&it) &&
	       bson_iter_recurse(&it, &child) && bson_iter_next(&child);
}

/* The items of a bulk and the index of each operation's item. */
struct sent {
	struct delivery *const *items;
	const size_t *index;
	size_t n;
};

/* Sets the outcome of the item of one write error. */
static void apply_write_error(const bson_t *write_error, void *arg)
{
	const struct sent *sent = arg;
	char text[DELIVERY_ERROR_MAX];
	int64_t k = mongo_write_error_index(write_error);
	if (k < 0 || (uint64_t)k >= sent->n)
		return;
	struct delivery *d = sent->items[sent->index[k]];
	if (mongo_duplicate_on_id(write_error)) {
		delivery_set(d, OUTCOME_DELIVERED, NULL, "the service has a newer or equal version");
		return;
	}
	mongo_write_error_text(write_error, text, sizeof(text));
	delivery_set(d, OUTCOME_RETRY, NULL, "%s", text);
}

/* The number a reply counts under key (nUpserted, nMatched), or 0. */
static int64_t reply_count(const bson_t *reply, const char *key)
{
	bson_iter_t it;
	return bson_iter_init_find(&it, reply, key) && BSON_ITER_HOLDS_NUMBER(&it) ? bson_iter_as_int64(&it) : 0;
}

/*
 * Reads the reply of a failed bulk of n operations. Each write error
 * decides its item. The others succeeded only if the reply accounts for
 * every operation (upserted, matched or failed: a bulk split into
 * several commands can stop half way) and reports no write concern
 * error; otherwise they are retried with the bulk's error.
 */
static void apply_failure(const bson_t *reply, const bson_error_t *error, struct delivery *const *items,
			  const size_t *index, size_t n)
{
	struct sent sent = { items, index, n };
	int64_t failed = mongo_each_write_error(reply, apply_write_error, &sent);
	bool wc_failed = mongo_write_concern_failed(reply);
	bool complete = failed + reply_count(reply, "nUpserted") + reply_count(reply, "nMatched") == (int64_t)n;
	for (size_t k = 0; k < n; k++) {
		struct delivery *d = items[index[k]];
		if (d->outcome == OUTCOME_RETRY)
			continue;
		if (wc_failed)
			delivery_set(d, OUTCOME_RETRY, NULL, "write concern: %s", error->message);
		else if (d->outcome == OUTCOME_NONE && complete)
			delivery_set(d, OUTCOME_DELIVERED, NULL, "upserted");
		else if (d->outcome == OUTCOME_NONE)
			delivery_set(d, OUTCOME_RETRY, NULL, "%s", error->message);
	}
}

static void mongo_deliver(struct sink *s, struct delivery *const *items, size_t n)
{
	struct sink_mongo *m = (struct sink_mongo *)s;
	size_t *index = xcalloc(n, sizeof(*index)), nops = 0;
	bson_t opts = BSON_INITIALIZER, upsert = BSON_INITIALIZER;
	bson_error_t error;
	mongoc_client_t *client = mongoc_client_pool_pop(m->pool);
	mongoc_collection_t *coll = mongoc_client_get_collection(client, m->database, m->collection);
	BSON_APPEND_BOOL(&opts, "ordered", false);
	mongoc_write_concern_append(m->wc, &opts);
	BSON_APPEND_BOOL(&upsert, "upsert", true);
	mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(coll, &opts);
	for (size_t i = 0; i < n; i++) {
		struct delivery *d = items[i];
		if (d->outcome != OUTCOME_NONE)
			continue;
		bson_t selector = BSON_INITIALIZER;
		build_selector(m, d, &selector);
		if (mongoc_bulk_operation_replace_one_with_opts(bulk, &selector, d->doc, &upsert, &error))
			index[nops++] = i;
		else
			delivery_set(d, OUTCOME_DEAD, "mapping", "not a valid replacement document: %s", error.message);
		bson_destroy(&selector);
	}
	if (nops > 0) {
		bson_t reply;
		if (mongoc_bulk_operation_execute(bulk, &reply, &error) != 0) {
			for (size_t k = 0; k < nops; k++)
				delivery_set(items[index[k]], OUTCOME_DELIVERED, NULL, "upserted");
		} else {
			apply_failure(&reply, &error, items, index, nops);
		}
		bson_destroy(&reply);
	}
	mongoc_bulk_operation_destroy(bulk);
	mongoc_collection_destroy(coll);
	mongoc_client_pool_push(m->pool, client);
	bson_destroy(&opts);
	bson_destroy(&upsert);
	free(index);
}

static void mongo_free(struct sink *s)
{
	struct sink_mongo *m = (struct sink_mongo *)s;
	mongoc_client_pool_destroy(m->pool);
	mongoc_write_concern_destroy(m->wc);
	free(m);
}

/* The mongo sink of cfg (which must outlive it). Returns it, or NULL
 * with err. */
struct sink *sink_mongo_new(const struct migrate_config *cfg, char *err, size_t errlen)
{
	mongoc_client_pool_t *pool = mongo_pool_new(cfg->service.uri, cfg->sink_timeout_ms, err, errlen);
	if (pool == NULL)
		return NULL;
	struct sink_mongo *m = xcalloc(1, sizeof(*m));
	m->base.deliver = mongo_deliver;
	m->base.free = mongo_free;
	m->pool = pool;
	m->database = cfg->service.database;
	m->collection = cfg->service.collection;
	m->version_field = cfg->version_field;
	if (m->version_field)
		m->guard_field = mapping_output_name(&cfg->mapping, m->version_field);
	m->wc = mongoc_write_concern_new();
	mongoc_write_concern_set_w(m->wc, MONGOC_WRITE_CONCERN_W_MAJORITY);
	mongoc_write_concern_set_wtimeout_int64(m->wc, cfg->sink_timeout_ms);
	return &m->base;
}
