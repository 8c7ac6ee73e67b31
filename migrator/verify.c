/*
 * verify.c - compares a migrated user's two copies, field by field: the
 * legacy document after the mapping (what the service should hold) and
 * the service's document, read from its collection (mongo sink) or its
 * read API (http sink). `cutoverctl migration verify` (flags/ctl_verify.c)
 * picks the users and prints what this file finds; no Redis here.
 *
 * Values compare by BSON type and value, with three exceptions for what
 * a JSON API does to them: numbers compare as numbers across int32,
 * int64 and double; a date equals an ISO 8601 string of the same instant
 * (the example service renders dates as 2024-05-01T12:00:00.000Z); and
 * an ObjectId equals a string of its 24 hex digits. Embedded documents
 * compare member by member whatever their order (a service that builds
 * its answer need not keep legacy's), arrays element by element.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "migrator/migrator.h"

#define FRACTION_DIGITS_MAX 9

/* ---- ISO 8601 times ------------------------------------------------------ */

/* The number at s[0..n) of exactly n decimal digits, or -1. */
static int digits(const char *s, size_t n)
{
	int v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

static bool leap_year(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int y, int m, int d)
{
	y -= m <= 2;
	int era = (y >= 0 ? y : y - 399) / 400;
	int yoe = y - era * 400;
	int doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return (int64_t)era * 146097 + doe - 719468;
}

/* The zone at s[0..len): Z, +HH:MM, +HHMM or -..., as minutes east of
 * UTC into *minutes. Returns 0, or -1. */
static int parse_zone(const char *s, size_t len, int *minutes)
{
	if (len == 1 && (s[0] == 'Z' || s[0] == 'z')) {
		*minutes = 0;
		return 0;
	}
	if ((len != 6 && len != 5) || (s[0] != '+' && s[0] != '-') || (len == 6 && s[3] != ':'))
		return -1;
	int hh = digits(s + 1, 2), mm = digits(s + len - 2, 2);
	if (hh < 0 || hh > 23 || mm < 0 || mm > 59)
		return -1;
	*minutes = (s[0] == '-' ? -1 : 1) * (hh * 60 + mm);
	return 0;
}

/*
 * Reads s[0..len) as an ISO 8601 date and time with a zone,
 * YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM|+HHMM), into *ms
 * (milliseconds since the epoch, as a BSON date). Returns 0, or -1 for
 * any other text, and for a time between two milliseconds, which no
 * BSON date can be.
 */
int verify_parse_time(const char *s, size_t len, int64_t *ms)
{
	static const int month_days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
	    s[13] != ':' || s[16] != ':')
		return -1;
	int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
	int h = digits(s + 11, 2), mi = digits(s + 14, 2), sec = digits(s + 17, 2);
	if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 59)
		return -1;
	if (d > month_days[mo - 1] + (mo == 2 && leap_year(y)))
		return -1;
	size_t i = 19;
	int64_t millis = 0;
	if (s[i] == '.') {
		size_t start = ++i;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++;
		size_t n = i - start;
		if (n == 0 || n > FRACTION_DIGITS_MAX)
			return -1;
		for (size_t k = 0; k < 3; k++)
			millis = millis * 10 + (k < n ? s[start + k] - '0' : 0);
		for (size_t k = 3; k < n; k++)
			if (s[start + k] != '0')
				return -1;
	}
	int zone;
	if (parse_zone(s + i, len - i, &zone) < 0)
		return -1;
	int64_t seconds = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - (int64_t)zone * 60;
	*ms = seconds * 1000 + millis;
	return 0;
}

/* ---- values ------------------------------------------------------------- */

static bool holds_number(const bson_iter_t *it)
{
	return BSON_ITER_HOLDS_INT32(it) || BSON_ITER_HOLDS_INT64(it) || BSON_ITER_HOLDS_DOUBLE(it);
}

/* Two numbers, exactly: an integer equals a double only if the double is
 * that integer (no rounding of large int64s through double). NaN equals
 * NaN: the same value on both sides is no drift. */
static bool numbers_equal(const bson_iter_t *a, const bson_iter_t *b)
{
	bool a_double = BSON_ITER_HOLDS_DOUBLE(a), b_double = BSON_ITER_HOLDS_DOUBLE(b);
	if (!a_double && !b_double)
		return bson_iter_as_int64(a) == bson_iter_as_int64(b);
	if (a_double && b_double) {
		double x = bson_iter_double(a), y = bson_iter_double(b);
		return x == y || (x != x && y != y);
	}
	double d = a_double ? bson_iter_double(a) : bson_iter_double(b);
	int64_t i = a_double ? bson_iter_as_int64(b) : bson_iter_as_int64(a);
	if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
		return false;
	return (double)(int64_t)d == d && (int64_t)d == i;
}

/* Whether the string at text is the ISO 8601 form of the date at date. */
static bool date_matches_text(const bson_iter_t *date, const bson_iter_t *text)
{
	uint32_t len;
	const char *s = bson_iter_utf8(text, &len);
	int64_t ms;
	return verify_parse_time(s, len, &ms) == 0 && ms == bson_iter_date_time(date);
}

/* Whether the string at text is the ObjectId at oid in hex. */
static bool oid_matches_text(const bson_iter_t *oid, const bson_iter_t *text)
{
	uint32_t len;
	const char *s = bson_iter_utf8(text, &len);
	char hex[OID_HEX_LEN + 1];
	bson_oid_to_string(bson_iter_oid(oid), hex);
	return len == OID_HEX_LEN && strncasecmp(s, hex, OID_HEX_LEN) == 0;
}

/* The embedded document or array at it, as a static bson_t. */
static bool embedded(const bson_iter_t *it, bson_t *out)
{
	uint32_t len;
	const uint8_t *data;
	if (BSON_ITER_HOLDS_ARRAY(it))
		bson_iter_array(it, &len, &data);
	else
		bson_iter_document(it, &len, &data);
	return bson_init_static(out, data, len);
}

/* Two embedded documents: the same members with equal values, in any
 * order. */
static bool documents_equal(const bson_iter_t *a, const bson_iter_t *b)
{
	bson_t da, db;
	bson_iter_t ia, ib;
	if (!embedded(a, &da) || !embedded(b, &db) || bson_count_keys(&da) != bson_count_keys(&db) ||
	    !bson_iter_init(&ia, &da))
		return false;
	while (bson_iter_next(&ia))
		if (!bson_iter_init_find(&ib, &db, bson_iter_key(&ia)) || !verify_values_equal(&ia, &ib))
			return false;
	return true;
}

/* Two arrays: equal elements in the same order. */
static bool arrays_equal(const bson_iter_t *a, const bson_iter_t *b)
{
	bson_t da, db;
	bson_iter_t ia, ib;
	if (!embedded(a, &da) || !embedded(b, &db) || !bson_iter_init(&ia, &da) || !bson_iter_init(&ib, &db))
		return false;
	for (;;) {
		bool more_a = bson_iter_next(&ia), more_b = bson_iter_next(&ib);
		if (!more_a || !more_b)
			return more_a == more_b;
		if (!verify_values_equal(&ia, &ib))
			return false;
	}
}

/* Same type, same bytes: each value appended under one key, compared as
 * documents. */
static bool raw_equal(const bson_iter_t *a, const bson_iter_t *b)
{
	bson_t da = BSON_INITIALIZER, db = BSON_INITIALIZER;
	bson_append_iter(&da, "", 0, a);
	bson_append_iter(&db, "", 0, b);
	bool same = bson_equal(&da, &db);
	bson_destroy(&da);
	bson_destroy(&db);
	return same;
}

/*
 * Whether the value at legacy (of the mapped legacy document) and the
 * one at service are the same, by the rules at the top of this file.
 * Symmetric: the names only say where each usually comes from.
 */
bool verify_values_equal(const bson_iter_t *legacy, const bson_iter_t *service)
{
	const bson_iter_t *a = legacy, *b = service;
	if (holds_number(a) && holds_number(b))
		return numbers_equal(a, b);
	if (BSON_ITER_HOLDS_UTF8(a) && !BSON_ITER_HOLDS_UTF8(b)) {
		a = service;
		b = legacy;
	}
	/* From here, if only one of them is a string, it is b. */
	if (BSON_ITER_HOLDS_DATE_TIME(a) && BSON_ITER_HOLDS_UTF8(b))
		return date_matches_text(a, b);
	if (BSON_ITER_HOLDS_OID(a) && BSON_ITER_HOLDS_UTF8(b))
		return oid_matches_text(a, b);
	if (bson_iter_type(a) != bson_iter_type(b))
		return false;
	if (BSON_ITER_HOLDS_DOCUMENT(a))
		return documents_equal(a, b);
	if (BSON_ITER_HOLDS_ARRAY(a))
		return arrays_equal(a, b);
	return raw_equal(a, b);
}

/* Whether doc is a tombstone: {deleted: true}, as the example service
 * keeps a deleted user. */
bool verify_is_deleted(const bson_t *doc)
{
	bson_iter_t it;
	return bson_iter_init_find(&it, doc, "deleted") && BSON_ITER_HOLDS_BOOL(&it) && bson_iter_bool(&it);
}

/* ---- documents ------------------------------------------------------------ */

/* The value at it as relaxed extended JSON (caller frees). libbson
 * writes a value only inside a document, {"v": x} as `{ "v" : x }`: the
 * value is what lies between. A string that is not UTF-8 has no JSON
 * form. */
static char *value_json(const bson_iter_t *it)
{
	static const char head[] = "{ \"v\" : ", tail[] = " }";
	const size_t hlen = sizeof(head) - 1, tlen = sizeof(tail) - 1;
	bson_t doc = BSON_INITIALIZER;
	size_t len;
	bson_append_iter(&doc, "v", 1, it);
	char *json = bson_as_relaxed_extended_json(&doc, &len);
	bson_destroy(&doc);
	if (json == NULL)
		return xstrdup("\"(not UTF-8)\"");
	char *out = len >= hlen + tlen && strncmp(json, head, hlen) == 0 && strcmp(json + len - tlen, tail) == 0
			    ? xstrndup(json + hlen, len - hlen - tlen)
			    : xstrdup(json);
	bson_free(json);
	return out;
}

static void add_field(struct verify_report *r, enum verify_kind kind, const char *name, const bson_iter_t *legacy,
		      const bson_iter_t *service)
{
	r->fields = xrealloc(r->fields, (r->nfields + 1) * sizeof(*r->fields));
	r->fields[r->nfields++] = (struct verify_field){
		.kind = kind,
		.name = xstrdup(name),
		.legacy = legacy ? value_json(legacy) : NULL,
		.service = service ? value_json(service) : NULL,
	};
}

/* Whether field is left out of the comparison: _id (the lookup key) or
 * a field of the ignore list. */
static bool ignored(const char *field, char *const *ignore, size_t nignore)
{
	if (strcmp(field, "_id") == 0)
		return true;
	for (size_t i = 0; i < nignore; i++)
		if (strcmp(ignore[i], field) == 0)
			return true;
	return false;
}

/* Adds every difference between mapped and service to r: the mapped
 * document's fields in order, then those only the service has. */
static void compare_documents(const bson_t *mapped, const bson_t *service, char *const *ignore, size_t nignore,
			      struct verify_report *r)
{
	bson_iter_t l, s;
	if (bson_iter_init(&l, mapped)) {
		while (bson_iter_next(&l)) {
			const char *key = bson_iter_key(&l);
			if (ignored(key, ignore, nignore))
				continue;
			if (!bson_iter_init_find(&s, service, key))
				add_field(r, VERIFY_MISSING, key, &l, NULL);
			else if (!verify_values_equal(&l, &s))
				add_field(r, VERIFY_DIFFERS, key, &l, &s);
		}
	}
	if (bson_iter_init(&s, service)) {
		while (bson_iter_next(&s)) {
			const char *key = bson_iter_key(&s);
			if (!ignored(key, ignore, nignore) && !bson_iter_init_find(&l, mapped, key))
				add_field(r, VERIFY_EXTRA, key, NULL, &s);
		}
	}
}

/*
 * Compares one user's legacy document (as stored: NULL when legacy has
 * none) under mapping m with the service's (NULL when it has none; a
 * {deleted: true} tombstone counts as none), leaving out _id and the
 * fields of ignore. Fills *out (the caller frees it with
 * verify_report_free): absent on both sides is VERIFY_GONE, consistent.
 */
void verify_user(const struct mapping *m, char *const *ignore, size_t nignore, const bson_t *legacy,
		 const bson_t *service, struct verify_report *out)
{
	memset(out, 0, sizeof(*out));
	if (service != NULL && verify_is_deleted(service))
		service = NULL;
	if (legacy == NULL || service == NULL) {
		out->outcome = legacy ? VERIFY_NOT_IN_SERVICE : service ? VERIFY_NOT_IN_LEGACY : VERIFY_GONE;
		return;
	}
	bson_t mapped = BSON_INITIALIZER;
	if (mapping_apply(m, legacy, &mapped, out->why, sizeof(out->why)) < 0) {
		out->outcome = VERIFY_UNMAPPABLE;
	} else {
		compare_documents(&mapped, service, ignore, nignore, out);
		out->outcome = out->nfields > 0 ? VERIFY_DRIFT : VERIFY_SAME;
	}
	bson_destroy(&mapped);
}

/* Frees what r owns, not r. */
void verify_report_free(struct verify_report *r)
{
	for (size_t i = 0; i < r->nfields; i++) {
		free(r->fields[i].name);
		free(r->fields[i].legacy);
		free(r->fields[i].service);
	}
	free(r->fields);
	memset(r, 0, sizeof(*r));
}

/* ---- the service's copies ------------------------------------------------- */

struct verify_service {
	struct legacy *mongo;      /* sink type mongo: its collection, by _id */
	struct http_client *http;  /* sink type http: verify.url */
	struct buf body;           /* the last response's */
};

/*
 * The reader of the service's copies under cfg (which must outlive it):
 * the mongo sink's collection, or for an http sink verify.url, which is
 * then required. Requests time out after sink.timeout. Returns it (the
 * caller closes it with verify_service_close), or NULL with err.
 */
struct verify_service *verify_service_open(const struct migrate_config *cfg, char *err, size_t errlen)
{
	struct verify_service *s = xcalloc(1, sizeof(*s));
	buf_init(&s->body);
	if (cfg->sink == SINK_MONGO)
		s->mongo = legacy_open_target(&cfg->service, cfg->id_type, NULL, cfg->sink_timeout_ms, err, errlen);
	else if (cfg->verify_url == NULL)
		snprintf(err, errlen,
			 "%s: verify: url is required with sink type http: the service's read API, such as "
			 "http://127.0.0.1:3001/api/users/{id}",
			 cfg->path);
	else
		s->http = http_client_new(cfg->verify_url, cfg->sink_timeout_ms, err, errlen);
	if (s->mongo == NULL && s->http == NULL) {
		verify_service_close(s);
		return NULL;
	}
	return s;
}

void verify_service_close(struct verify_service *s)
{
	if (s == NULL)
		return;
	legacy_close(s->mongo);
	http_client_free(s->http);
	buf_free(&s->body);
	free(s);
}

/* The mongo sink's copies: one find {_id: {$in: [...]}}, with legacy's
 * id rules (the sink keeps legacy's _id). */
static int load_mongo(struct verify_service *s, struct delivery *const *items, size_t n, bson_t **docs, char *err,
		      size_t errlen)
{
	struct delivery *probes = xcalloc(n, sizeof(*probes));
	struct delivery **list = xcalloc(n, sizeof(*list));
	for (size_t i = 0; i < n; i++) {
		probes[i].user = items[i]->user;
		list[i] = &probes[i];
	}
	int rc = legacy_load(s->mongo, list, n, err, errlen);
	for (size_t i = 0; i < n; i++)
		docs[i] = probes[i].legacy;
	free(list);
	free(probes);
	return rc;
}

/* One user from the read API into *doc: 200 with a JSON object, or 404
 * (or 410) for none. Anything else is an error: the service cannot tell
 * us what it holds. */
static int load_http_one(struct verify_service *s, const char *user, bson_t **doc, char *err, size_t errlen)
{
	static const char *const headers[] = { "Accept", "application/json", NULL };
	struct http_reply reply;
	bson_error_t error;
	http_client_request(s->http, HTTP_GET, user, NULL, 0, headers, &s->body, &reply);
	if (reply.status == 404 || reply.status == 410)
		return 0;
	if (reply.status == 0) {
		snprintf(err, errlen, "%s", reply.error);
		return -1;
	}
	if (reply.status != 200) {
		snprintf(err, errlen, "GET of user %s: HTTP %d: %s", user, reply.status, reply.excerpt);
		return -1;
	}
	size_t start = 0;
	while (start < s->body.len && strchr(" \t\r\n", s->body.data[start]) != NULL)
		start++;
	if (start == s->body.len || s->body.data[start] != '{') {
		snprintf(err, errlen, "GET of user %s: the answer is not a JSON object: %s", user, reply.excerpt);
		return -1;
	}
	*doc = bson_new_from_json((const uint8_t *)s->body.data, (ssize_t)s->body.len, &error);
	if (*doc == NULL) {
		snprintf(err, errlen, "GET of user %s: the answer is not JSON: %s", user, error.message);
		return -1;
	}
	return 0;
}

/*
 * The service's copy of each item's user into docs[i] (n slots; NULL
 * where it has none; the caller destroys the others). Returns 0, or -1
 * with err when the service could not be read, every docs[i] then NULL.
 */
int verify_service_load(struct verify_service *s, struct delivery *const *items, size_t n, bson_t **docs,
			char *err, size_t errlen)
{
	memset(docs, 0, n * sizeof(*docs));
	if (s->mongo)
		return load_mongo(s, items, n, docs, err, errlen);
	for (size_t i = 0; i < n; i++) {
		if (load_http_one(s, items[i]->user, &docs[i], err, errlen) == 0)
			continue;
		while (i > 0) {
			if (docs[--i])
				bson_destroy(docs[i]);
			docs[i] = NULL;
		}
		return -1;
	}
	return 0;
}
