/*
 * legacy.c - reads users from the legacy collection, a batch with one
 * find, through a mongoc client pool; walks and counts it in _id order
 * for the backfill; and the MongoDB helpers the mongo sink uses too: URI
 * checks, pools with our timeouts, mongoc's log routed into ours.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrator/migrator.h"

#define SELECT_TIMEOUT_MS 5000  /* unless the URI says otherwise */
#define LEGACY_SOCKET_TIMEOUT_MS 30000

struct legacy {
	mongoc_client_pool_t *pool;
	const char *database;
	const char *collection;
	enum legacy_id_type id_type;
	bson_t *projection; /* NULL: whole documents */
};

/* One requested id, in the order legacy_load looks documents up. */
struct wanted {
	char key[USER_ID_MAX + 1]; /* the id, or an ObjectId's lowercase hex */
	struct delivery *d;
};

/* Whether uri parses as a MongoDB connection string. The message leaves
 * the URI out: it may hold a password. */
int mongo_uri_check(const char *uri, char *why, size_t whylen)
{
	bson_error_t error;
	mongoc_uri_t *u = mongoc_uri_new_with_error(uri, &error);
	if (u == NULL) {
		snprintf(why, whylen, "not a MongoDB URI: %s", error.message);
		return -1;
	}
	mongoc_uri_destroy(u);
	return 0;
}

/*
 * A client pool for uri, with serverSelectionTimeoutMS of 5 s and
 * socketTimeoutMS of socket_ms unless the URI sets them, so that an
 * unreachable server is reported in seconds rather than minutes. Returns
 * the pool (the caller destroys it), or NULL with err.
 */
mongoc_client_pool_t *mongo_pool_new(const char *uri, int socket_ms, char *err, size_t errlen)
{
	bson_error_t error;
	mongoc_uri_t *u = mongoc_uri_new_with_error(uri, &error);
	if (u == NULL) {
		snprintf(err, errlen, "not a MongoDB URI: %s", error.message);
		return NULL;
	}
	if (!mongoc_uri_has_option(u, MONGOC_URI_SERVERSELECTIONTIMEOUTMS))
		mongoc_uri_set_option_as_int32(u, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, SELECT_TIMEOUT_MS);
	if (!mongoc_uri_has_option(u, MONGOC_URI_SOCKETTIMEOUTMS))
		mongoc_uri_set_option_as_int32(u, MONGOC_URI_SOCKETTIMEOUTMS, socket_ms);
	if (!mongoc_uri_has_option(u, MONGOC_URI_APPNAME))
		mongoc_uri_set_appname(u, "cutover-migrate");
	mongoc_client_pool_t *pool = mongoc_client_pool_new_with_error(u, &error);
	mongoc_uri_destroy(u);
	if (pool == NULL) {
		snprintf(err, errlen, "cannot create a MongoDB client pool: %s", error.message);
		return NULL;
	}
	mongoc_client_pool_set_error_api(pool, MONGOC_ERROR_API_VERSION_2);
	return pool;
}

/* mongoc's own messages, at our levels; its debug and trace are left out. */
static void on_mongoc_log(mongoc_log_level_t level, const char *domain, const char *message, void *arg)
{
	(void)arg;
	if (level <= MONGOC_LOG_LEVEL_ERROR)
		log_error("mongoc %s: %s", domain, message);
	else if (level == MONGOC_LOG_LEVEL_WARNING)
		log_warn("mongoc %s: %s", domain, message);
	else if (level <= MONGOC_LOG_LEVEL_INFO)
		log_debug("mongoc %s: %s", domain, message);
}

void mongo_log_to_ours(void)
{
	mongoc_log_set_handler(on_mongoc_log, NULL);
}

/*
 * With a keep list, only the fields the mapping can use are read: those
 * kept (with _id, which MongoDB adds by itself) and the version field.
 */
static bson_t *legacy_projection(const struct migrate_config *cfg)
{
	const struct mapping *m = &cfg->mapping;
	if (m->nkeep == 0)
		return NULL;
	bson_t *p = bson_new();
	for (size_t i = 0; i < m->nkeep; i++)
		BSON_APPEND_INT32(p, m->keep[i], 1);
	if (cfg->version_field && mapping_output_name(m, cfg->version_field) == NULL)
		BSON_APPEND_INT32(p, cfg->version_field, 1);
	return p;
}

/*
 * A reader of t's collection (which must outlive it) that looks users up
 * as id_type says and reads their documents with projection (taken over;
 * NULL for whole documents): legacy_open's, sync-back's, and verify.c's
 * for the mongo sink's copies, which keep legacy's _id. Opens the pool
 * (connections are made lazily, so an unreachable server is not an error
 * yet). Returns the reader, or NULL with err.
 */
struct legacy *legacy_open_target(const struct mongo_target *t, enum legacy_id_type id_type, bson_t *projection,
				  int socket_ms, char *err, size_t errlen)
{
	mongoc_client_pool_t *pool = mongo_pool_new(t->uri, socket_ms, err, errlen);
	if (pool == NULL) {
		if (projection)
			bson_destroy(projection);
		return NULL;
	}
	struct legacy *l = xcalloc(1, sizeof(*l));
	l->pool = pool;
	l->database = t->database;
	l->collection = t->collection;
	l->id_type = id_type;
	l->projection = projection;
	return l;
}

/* The legacy collection of cfg (which must outlive it), read with the
 * mapping's projection. Returns the reader, or NULL with err. */
struct legacy *legacy_open(const struct migrate_config *cfg, char *err, size_t errlen)
{
	return legacy_open_target(&cfg->legacy, cfg->id_type, legacy_projection(cfg), LEGACY_SOCKET_TIMEOUT_MS, err,
				  errlen);
}

/* The connections of l, for writes to the same server (sync-back's). */
mongoc_client_pool_t *legacy_pool(const struct legacy *l)
{
	return l->pool;
}

void legacy_close(struct legacy *l)
{
	if (l == NULL)
		return;
	mongoc_client_pool_destroy(l->pool);
	if (l->projection)
		bson_destroy(l->projection);
	free(l);
}

static int compare_wanted(const void *a, const void *b)
{
	return strcmp(((const struct wanted *)a)->key, ((const struct wanted *)b)->key);
}

/*
 * The user id a legacy document stands for, into id: a string _id as it
 * is, an ObjectId as its 24 lowercase hex digits. Returns 0, or -1 with
 * *why for an _id that cannot be a user id: another type, or a string
 * user_id_check refuses.
 */
int legacy_user_id(const bson_t *doc, char id[USER_ID_MAX + 1], const char **why)
{
	bson_iter_t it;
	uint32_t len;
	if (!bson_iter_init_find(&it, doc, "_id")) {
		*why = "no _id";
		return -1;
	}
	if (BSON_ITER_HOLDS_OID(&it)) {
		bson_oid_to_string(bson_iter_oid(&it), id);
		return 0;
	}
	if (!BSON_ITER_HOLDS_UTF8(&it)) {
		*why = "_id is neither a string nor an ObjectId";
		return -1;
	}
	const char *s = bson_iter_utf8(&it, &len);
	if (user_id_check(s, len, why) < 0)
		return -1;
	memcpy(id, s, len);
	id[len] = '\0';
	return 0;
}

/* The key a returned document is matched by, into key; false for an
 * _id that no requested id can be (the worker looks up valid ids only). */
static bool document_key(const bson_t *doc, char key[USER_ID_MAX + 1])
{
	const char *why;
	return legacy_user_id(doc, key, &why) == 0;
}

/*
 * Appends each item's id to the $in array, as an ObjectId where the
 * configuration says so and the id is 24 hex digits, and fills wanted
 * with the key each will be matched by.
 */
static void build_filter(const struct legacy *l, struct delivery *const *items, size_t n, struct wanted *wanted,
			 bson_t *filter)
{
	bson_t id, in;
	char index[16];
	const char *key;
	BSON_APPEND_DOCUMENT_BEGIN(filter, "_id", &id);
	BSON_APPEND_ARRAY_BEGIN(&id, "$in", &in);
	for (size_t i = 0; i < n; i++) {
		struct delivery *d = items[i];
		size_t len = strlen(d->user);
		wanted[i].d = d;
		bson_uint32_to_string((uint32_t)i, &key, index, sizeof(index));
		d->as_oid = legacy_append_id(&in, key, d->user, len, l->id_type);
		snprintf(wanted[i].key, sizeof(wanted[i].key), "%s", d->user);
		if (d->as_oid) /* as bson_oid_to_string writes it: lower case */
			for (char *c = wanted[i].key; *c; c++)
				*c = (char)tolower((unsigned char)*c);
	}
	bson_append_array_end(&id, &in);
	bson_append_document_end(filter, &id);
}

/* Gives a copy of doc to every wanted item with its key (ids differing
 * only in the case of their hex digits are one ObjectId). */
static void attach(struct wanted *wanted, size_t n, const bson_t *doc)
{
	struct wanted probe;
	if (!document_key(doc, probe.key))
		return;
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(wanted[mid].key, probe.key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < n && strcmp(wanted[i].key, probe.key) == 0; i++)
		if (wanted[i].d->legacy == NULL)
			wanted[i].d->legacy = bson_copy(doc);
}

/*
 * Loads the legacy documents of items (distinct users) with one find
 * {_id: {$in: [...]}}, setting each found item's legacy to a copy of its
 * document; items left with legacy NULL are not in the collection.
 * Returns 0, or -1 with err when the find failed (nothing is known then
 * about any item).
 */
int legacy_load(struct legacy *l, struct delivery *const *items, size_t n, char *err, size_t errlen)
{
	struct wanted *wanted = xcalloc(n, sizeof(*wanted));
	bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
	bson_error_t error;
	const bson_t *doc;
	build_filter(l, items, n, wanted, &filter);
	qsort(wanted, n, sizeof(*wanted), compare_wanted);
	if (l->projection)
		BSON_APPEND_DOCUMENT(&opts, "projection", l->projection);
	mongoc_client_t *client = mongoc_client_pool_pop(l->pool);
	mongoc_collection_t *coll = mongoc_client_get_collection(client, l->database, l->collection);
	mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
	while (mongoc_cursor_next(cursor, &doc))
		attach(wanted, n, doc);
	int rc = 0;
	if (mongoc_cursor_error(cursor, &error)) {
		snprintf(err, errlen, "find in %s.%s failed: %s", l->database, l->collection, error.message);
		for (size_t i = 0; i < n; i++) {
			if (items[i]->legacy) {
				bson_destroy(items[i]->legacy);
				items[i]->legacy = NULL;
			}
		}
		rc = -1;
	}
	mongoc_cursor_destroy(cursor);
	mongoc_collection_destroy(coll);
	mongoc_client_pool_push(l->pool, client);
	bson_destroy(&filter);
	bson_destroy(&opts);
	free(wanted);
	return rc;
}

/* ---- the walk: the whole collection in _id order ----------------------
 * A comparison ($gt) only matches values of its own BSON type, so the
 * walk takes the types a user id can have one after the other, in
 * MongoDB's order: strings, then ObjectIds. */

/* {_id: the first value of a type}: "" for strings, else ObjectId 0. */
static void walk_start(bool strings, bson_t *doc)
{
	static const bson_oid_t zero;
	if (strings)
		BSON_APPEND_UTF8(doc, "_id", "");
	else
		BSON_APPEND_OID(doc, "_id", &zero);
}

/* Appends {_id: {op: bound's _id}} to filter. */
static void append_range(bson_t *filter, const char *op, const bson_t *bound)
{
	bson_iter_t it;
	bson_t range;
	bson_iter_init_find(&it, bound, "_id");
	BSON_APPEND_DOCUMENT_BEGIN(filter, "_id", &range);
	bson_append_iter(&range, op, -1, &it);
	bson_append_document_end(filter, &range);
}

/* Whether doc's _id is a string (or doc is NULL: the walk's start). */
static bool id_is_string(const bson_t *doc)
{
	bson_iter_t it;
	return doc == NULL || (bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_UTF8(&it));
}

/* One find {_id: {op: bound's _id}} sorted by _id, limit documents at
 * most, into docs[*n...]. Returns 0, or -1 with err. */
static int find_range(struct legacy *l, const char *op, const bson_t *bound, int limit, bool whole, bson_t **docs,
		      size_t *n, char *err, size_t errlen)
{
	bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort, id_only;
	bson_error_t error;
	const bson_t *doc;
	append_range(&filter, op, bound);
	BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
	BSON_APPEND_INT32(&sort, "_id", 1);
	bson_append_document_end(&opts, &sort);
	BSON_APPEND_INT64(&opts, "limit", limit);
	BSON_APPEND_INT64(&opts, "batchSize", limit);
	if (!whole) {
		BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &id_only);
		BSON_APPEND_INT32(&id_only, "_id", 1);
		bson_append_document_end(&opts, &id_only);
	} else if (l->projection) {
		BSON_APPEND_DOCUMENT(&opts, "projection", l->projection);
	}
	mongoc_client_t *client = mongoc_client_pool_pop(l->pool);
	mongoc_collection_t *coll = mongoc_client_get_collection(client, l->database, l->collection);
	mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
	while (*n < (size_t)limit && mongoc_cursor_next(cursor, &doc))
		docs[(*n)++] = bson_copy(doc);
	int rc = 0;
	if (mongoc_cursor_error(cursor, &error)) {
		snprintf(err, errlen, "find in %s.%s failed: %s", l->database, l->collection, error.message);
		rc = -1;
	}
	mongoc_cursor_destroy(cursor);
	mongoc_collection_destroy(coll);
	mongoc_client_pool_push(l->pool, client);
	bson_destroy(&filter);
	bson_destroy(&opts);
	return rc;
}

/*
 * The next page of the walk: up to limit documents whose _id comes after
 * after's (NULL: from the start), whole (as legacy_load reads them) or
 * _id only, into docs (room for limit). Returns 0 with their number in
 * *n, 0 once the walk is over; or -1 with err (*n is then 0).
 */
int legacy_walk(struct legacy *l, const bson_t *after, int limit, bool whole, bson_t **docs, size_t *n, char *err,
		size_t errlen)
{
	bson_t start = BSON_INITIALIZER, oids = BSON_INITIALIZER;
	walk_start(true, &start);
	walk_start(false, &oids);
	*n = 0;
	int rc = find_range(l, after ? "$gt" : "$gte", after ? after : &start, limit, whole, docs, n, err, errlen);
	if (rc == 0 && *n == 0 && id_is_string(after))
		rc = find_range(l, "$gte", &oids, limit, whole, docs, n, err, errlen);
	if (rc < 0) {
		while (*n > 0)
			bson_destroy(docs[--*n]);
	}
	bson_destroy(&start);
	bson_destroy(&oids);
	return rc;
}

/* Adds the number of documents matching {_id: {op: bound's _id}} to *n.
 * Returns 0, or -1 with err. */
static int count_range(const struct legacy *l, mongoc_collection_t *coll, const char *op, const bson_t *bound,
		       int64_t *n, char *err, size_t errlen)
{
	bson_t filter = BSON_INITIALIZER;
	bson_error_t error;
	append_range(&filter, op, bound);
	int64_t count = mongoc_collection_count_documents(coll, &filter, NULL, NULL, NULL, &error);
	bson_destroy(&filter);
	if (count < 0) {
		snprintf(err, errlen, "count in %s.%s failed: %s", l->database, l->collection, error.message);
		return -1;
	}
	*n += count;
	return 0;
}

/*
 * Counts the collection's documents into *total (an estimate, from its
 * metadata) and those the walk has passed once it is at after's _id
 * into *done (0 for NULL): every string _id up to it, and the ObjectIds
 * up to it too when it is one. Returns 0, or -1 with err.
 */
int legacy_count(struct legacy *l, const bson_t *after, int64_t *total, int64_t *done, char *err, size_t errlen)
{
	bson_t start = BSON_INITIALIZER;
	bson_error_t error;
	walk_start(true, &start);
	*done = 0;
	mongoc_client_t *client = mongoc_client_pool_pop(l->pool);
	mongoc_collection_t *coll = mongoc_client_get_collection(client, l->database, l->collection);
	int rc = 0;
	*total = mongoc_collection_estimated_document_count(coll, NULL, NULL, NULL, &error);
	if (*total < 0) {
		snprintf(err, errlen, "count in %s.%s failed: %s", l->database, l->collection, error.message);
		rc = -1;
	}
	if (rc == 0 && after && !id_is_string(after))
		rc = count_range(l, coll, "$gte", &start, done, err, errlen);
	if (rc == 0 && after)
		rc = count_range(l, coll, "$lte", after, done, err, errlen);
	mongoc_collection_destroy(coll);
	mongoc_client_pool_push(l->pool, client);
	bson_destroy(&start);
	return rc;
}

/*
 * Appends user[0..len) under key as the legacy _id it stands for: an
 * ObjectId when id_type says so and it is 24 hex digits, else a string.
 * Returns whether it went in as an ObjectId.
 */
bool legacy_append_id(bson_t *doc, const char *key, const char *user, size_t len, enum legacy_id_type id_type)
{
	if (id_type == LEGACY_ID_OBJECTID && len == OID_HEX_LEN && bson_oid_is_valid(user, len)) {
		bson_oid_t oid;
		bson_oid_init_from_string(&oid, user);
		bson_append_oid(doc, key, -1, &oid);
		return true;
	}
	bson_append_utf8(doc, key, -1, user, (int)len);
	return false;
}
