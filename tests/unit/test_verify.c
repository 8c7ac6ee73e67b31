/*
 * Unit tests for migrator/verify.c: ISO 8601 times, the value comparison
 * (numbers across types, dates against strings, ObjectIds against hex,
 * embedded documents and arrays), a whole user under a mapping and an
 * ignore list, and the verify { } section of migrator/config.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "migrator/migrator.h"

#define ERR_MAX 512
#define PATH_MAX_TEST 300

#define LEGACY_SECTION "legacy {\n\turi = \"mongodb://127.0.0.1/\"\n\tdatabase = \"app\"\n}\n"
#define HTTP_SINK "sink {\n\ttype = \"http\"\n\turl = \"http://127.0.0.1:3001/import/{id}\"\n}\n"
#define MONGO_SINK "sink {\n\ttype = \"mongo\"\n\turi = \"mongodb://h/\"\n\tdatabase = \"svc\"\n}\n"

struct time_case {
	const char *text;
	int rc;
	int64_t ms;
};

struct value_case {
	const char *legacy; /* a JSON value, read as extended JSON */
	const char *service;
	bool equal;
};

/* A document of this file's extended JSON (caller destroys). */
static bson_t *json_doc(const char *json)
{
	bson_t *doc = bson_new_from_json((const uint8_t *)json, -1, NULL);
	assert_non_null(doc);
	return doc;
}

static void test_parse_time(void **state)
{
	(void)state;
	const int64_t noon = 1714564800000; /* 2024-05-01T12:00:00Z */
	const struct time_case cases[] = {
		{ "1970-01-01T00:00:00Z", 0, 0 },
		{ "2024-05-01T12:00:00Z", 0, noon },
		{ "2024-05-01T12:00:00.000Z", 0, noon },
		{ "2024-05-01t12:00:00.5z", 0, noon + 500 },
		{ "2024-05-01 12:00:00.123000000Z", 0, noon + 123 },
		{ "2024-05-01T14:00:00.000+02:00", 0, noon },
		{ "2024-05-01T07:30:00-0430", 0, noon },
		{ "1969-12-31T23:59:59.999Z", 0, -1 },
		{ "2024-02-29T00:00:00Z", 0, 1709164800000 },
		{ "2000-02-29T00:00:00Z", 0, 951782400000 },
		{ "2023-02-29T00:00:00Z", -1, 0 },
		{ "1900-02-29T00:00:00Z", -1, 0 },
		{ "2024-04-31T00:00:00Z", -1, 0 },
		{ "2024-13-01T00:00:00Z", -1, 0 },
		{ "2024-05-01T24:00:00Z", -1, 0 },
		{ "2024-05-01T12:60:00Z", -1, 0 },
		{ "2024-05-01T12:00:60Z", -1, 0 },
		{ "2024-05-01T12:00:00.000500Z", -1, 0 }, /* between two milliseconds */
		{ "2024-05-01T12:00:00.Z", -1, 0 },
		{ "2024-05-01T12:00:00.0000000000Z", -1, 0 },
		{ "2024-05-01T12:00:00", -1, 0 }, /* no zone: no instant */
		{ "2024-05-01T12:00:00+2", -1, 0 },
		{ "2024-05-01T12:00:00+24:00", -1, 0 },
		{ "2024-05-01T12:00:00ZZ", -1, 0 },
		{ "2024-05-01", -1, 0 },
		{ "20240501T120000Z", -1, 0 },
		{ "+2024-05-01T12:00:00Z", -1, 0 },
		{ "not a date at all, really", -1, 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t ms = 0;
		int rc = verify_parse_time(cases[i].text, strlen(cases[i].text), &ms);
		if (rc != cases[i].rc || (rc == 0 && ms != cases[i].ms))
			fail_msg("'%s': rc %d ms %lld, want rc %d ms %lld", cases[i].text, rc, (long long)ms, cases[i].rc,
				 (long long)cases[i].ms);
	}
}

/* Compares {"v": legacy} and {"v": service}, both ways round. */
static void expect_values(const struct value_case *c)
{
	char text[512];
	snprintf(text, sizeof(text), "{\"v\": %s}", c->legacy);
	bson_t *a = json_doc(text);
	snprintf(text, sizeof(text), "{\"v\": %s}", c->service);
	bson_t *b = json_doc(text);
	bson_iter_t ia, ib;
	assert_true(bson_iter_init_find(&ia, a, "v"));
	assert_true(bson_iter_init_find(&ib, b, "v"));
	if (verify_values_equal(&ia, &ib) != c->equal || verify_values_equal(&ib, &ia) != c->equal)
		fail_msg("%s vs %s: want %s", c->legacy, c->service, c->equal ? "equal" : "different");
	bson_destroy(a);
	bson_destroy(b);
}

static void test_values(void **state)
{
	(void)state;
	const struct value_case cases[] = {
		/* numbers, across int32, int64 and double */
		{ "42", "42", true },
		{ "42", "{\"$numberLong\": \"42\"}", true },
		{ "42", "42.0", true },
		{ "{\"$numberLong\": \"-7\"}", "-7.0", true },
		{ "42", "43", false },
		{ "42", "42.5", false },
		{ "0.1", "0.1", true },
		{ "0.1", "0.10000000000000002", false },
		{ "{\"$numberLong\": \"9007199254740993\"}", "9007199254740992.0", false },
		{ "{\"$numberLong\": \"9223372036854775807\"}", "9223372036854775808.0", false },
		{ "{\"$numberDouble\": \"NaN\"}", "{\"$numberDouble\": \"NaN\"}", true },
		{ "{\"$numberDouble\": \"NaN\"}", "0", false },
		{ "{\"$numberDouble\": \"Infinity\"}", "{\"$numberLong\": \"9223372036854775807\"}", false },
		{ "42", "\"42\"", false },
		{ "1", "true", false },
		/* dates, against dates and ISO 8601 strings */
		{ "{\"$date\": \"2024-05-01T12:00:00Z\"}", "{\"$date\": \"2024-05-01T12:00:00.000Z\"}", true },
		{ "{\"$date\": \"2024-05-01T12:00:00Z\"}", "{\"$date\": \"2024-05-01T12:00:00.001Z\"}", false },
		{ "{\"$date\": \"2024-05-01T12:00:00Z\"}", "\"2024-05-01T12:00:00.000Z\"", true },
		{ "{\"$date\": \"2024-05-01T12:00:00.250Z\"}", "\"2024-05-01T14:00:00.25+02:00\"", true },
		{ "{\"$date\": \"2024-05-01T12:00:00Z\"}", "\"2024-05-01T12:00:00.001Z\"", false },
		{ "{\"$date\": \"2024-05-01T12:00:00Z\"}", "\"2024-05-01T12:00:00\"", false },
		{ "{\"$date\": \"2024-05-01T12:00:00Z\"}", "\"yesterday\"", false },
		{ "{\"$date\": \"2024-05-01T12:00:00Z\"}", "1714564800000", false },
		{ "\"2024-05-01T12:00:00Z\"", "\"2024-05-01T12:00:00.000Z\"", false }, /* two strings: as strings */
		/* ObjectIds, against their hex digits */
		{ "{\"$oid\": \"65a1b2c3d4e5f60718293a4b\"}", "{\"$oid\": \"65a1b2c3d4e5f60718293a4b\"}", true },
		{ "{\"$oid\": \"65a1b2c3d4e5f60718293a4b\"}", "\"65A1B2C3D4E5F60718293A4B\"", true },
		{ "{\"$oid\": \"65a1b2c3d4e5f60718293a4b\"}", "\"65a1b2c3d4e5f60718293a4c\"", false },
		{ "{\"$oid\": \"65a1b2c3d4e5f60718293a4b\"}", "\"65a1b2c3d4e5f60718293a4b0\"", false },
		/* strings, booleans, null */
		{ "\"a@x.com\"", "\"a@x.com\"", true },
		{ "\"a@x.com\"", "\"A@x.com\"", false },
		{ "\"a@x.com\"", "\"a@x.com \"", false },
		{ "\"\"", "null", false },
		{ "true", "true", true },
		{ "true", "false", false },
		{ "null", "null", true },
		{ "null", "false", false },
		/* embedded documents: any order; arrays: in order */
		{ "{\"tier\": \"gold\", \"seats\": 3}", "{\"seats\": 3.0, \"tier\": \"gold\"}", true },
		{ "{\"tier\": \"gold\", \"seats\": 3}", "{\"tier\": \"gold\", \"seats\": 4}", false },
		{ "{\"tier\": \"gold\"}", "{\"tier\": \"gold\", \"seats\": 3}", false },
		{ "{\"tier\": \"gold\", \"x\": 1}", "{\"tier\": \"gold\", \"y\": 1}", false },
		{ "{\"at\": {\"$date\": \"2024-05-01T12:00:00Z\"}}", "{\"at\": \"2024-05-01T12:00:00.000Z\"}", true },
		{ "{}", "{}", true },
		{ "{}", "[]", false },
		{ "[1, 2, \"x\"]", "[1.0, {\"$numberLong\": \"2\"}, \"x\"]", true },
		{ "[1, 2]", "[2, 1]", false },
		{ "[1]", "[1, 1]", false },
		{ "[]", "[]", true },
		{ "[[1, {\"a\": [true]}]]", "[[1, {\"a\": [true]}]]", true },
		{ "[[1, {\"a\": [true]}]]", "[[1, {\"a\": [false]}]]", false },
		/* other types: same type, same bytes */
		{ "{\"$binary\": {\"base64\": \"AQI=\", \"subType\": \"00\"}}",
		  "{\"$binary\": {\"base64\": \"AQI=\", \"subType\": \"00\"}}", true },
		{ "{\"$binary\": {\"base64\": \"AQI=\", \"subType\": \"00\"}}", "\"AQI=\"", false },
		{ "{\"$numberDecimal\": \"1.5\"}", "{\"$numberDecimal\": \"1.5\"}", true },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expect_values(&cases[i]);
}

/* conf/migrate.conf's mapping: drop passwordHash, rename emailAddress to
 * email, default locale "en". */
static void shipped_mapping(struct mapping *m)
{
	char why[256] = "";
	mapping_init(m);
	assert_int_equal(mapping_add_drop(m, "passwordHash", why, sizeof(why)), 0);
	assert_int_equal(mapping_add_rename(m, "emailAddress:email", why, sizeof(why)), 0);
	assert_int_equal(mapping_add_default(m, "locale:\"en\"", why, sizeof(why)), 0);
	assert_int_equal(mapping_finish(m, why, sizeof(why)), 0);
}

/* verify_user on JSON documents (NULL for none). */
static void check_user(const char *legacy_json, const char *service_json, struct verify_report *r)
{
	static char *const ignore[] = { "updatedAt", "version" };
	struct mapping m;
	shipped_mapping(&m);
	bson_t *legacy = legacy_json ? json_doc(legacy_json) : NULL;
	bson_t *service = service_json ? json_doc(service_json) : NULL;
	verify_user(&m, ignore, 2, legacy, service, r);
	if (legacy)
		bson_destroy(legacy);
	if (service)
		bson_destroy(service);
	mapping_free(&m);
}

static void expect_field(const struct verify_field *f, enum verify_kind kind, const char *name, const char *legacy,
			 const char *service)
{
	assert_int_equal(f->kind, kind);
	assert_string_equal(f->name, name);
	if (legacy)
		assert_string_equal(f->legacy, legacy);
	else
		assert_null(f->legacy);
	if (service)
		assert_string_equal(f->service, service);
	else
		assert_null(f->service);
}

#define LEGACY_U1                                                                                                    \
	"{\"_id\": \"u1\", \"name\": \"Ada\", \"emailAddress\": \"a@x.com\", \"passwordHash\": \"$2b$x\", "          \
	"\"plan\": {\"tier\": \"gold\", \"seats\": 3}, \"updatedAt\": {\"$date\": \"2024-05-01T12:00:00Z\"}}"

static void test_user(void **state)
{
	(void)state;
	struct verify_report r;

	/* The service's copy as the example service renders it: the same. */
	check_user(LEGACY_U1,
		   "{\"_id\": \"u1\", \"name\": \"Ada\", \"email\": \"a@x.com\", \"plan\": {\"seats\": 3.0, \"tier\": "
		   "\"gold\"}, \"locale\": \"en\", \"updatedAt\": \"2024-05-02T00:00:00.000Z\", \"version\": 4}",
		   &r);
	assert_int_equal(r.outcome, VERIFY_SAME);
	assert_int_equal(r.nfields, 0);
	verify_report_free(&r);

	/* name missing, email differs, locale differs, nick extra; _id,
	 * updatedAt and version are left out. */
	check_user(LEGACY_U1,
		   "{\"_id\": \"other\", \"email\": \"b@x.com\", \"plan\": {\"tier\": \"gold\", \"seats\": 3}, "
		   "\"locale\": \"fr\", \"nick\": {\"$date\": \"2024-05-01T12:00:00Z\"}, \"version\": 1}",
		   &r);
	assert_int_equal(r.outcome, VERIFY_DRIFT);
	assert_int_equal(r.nfields, 4);
	expect_field(&r.fields[0], VERIFY_MISSING, "name", "\"Ada\"", NULL);
	expect_field(&r.fields[1], VERIFY_DIFFERS, "email", "\"a@x.com\"", "\"b@x.com\"");
	expect_field(&r.fields[2], VERIFY_DIFFERS, "locale", "\"en\"", "\"fr\"");
	expect_field(&r.fields[3], VERIFY_EXTRA, "nick", NULL, "{ \"$date\" : \"2024-05-01T12:00:00Z\" }");
	verify_report_free(&r);
	assert_null(r.fields);

	/* A nested difference shows the whole value. */
	check_user(LEGACY_U1,
		   "{\"name\": \"Ada\", \"email\": \"a@x.com\", \"plan\": {\"tier\": \"free\", \"seats\": 3}, "
		   "\"locale\": \"en\"}",
		   &r);
	assert_int_equal(r.outcome, VERIFY_DRIFT);
	assert_int_equal(r.nfields, 1);
	expect_field(&r.fields[0], VERIFY_DIFFERS, "plan", "{ \"tier\" : \"gold\", \"seats\" : 3 }",
		     "{ \"tier\" : \"free\", \"seats\" : 3 }");
	verify_report_free(&r);

	/* Absent or deleted. */
	check_user(NULL, NULL, &r);
	assert_int_equal(r.outcome, VERIFY_GONE);
	check_user(NULL, "{\"_id\": \"u1\", \"deleted\": true, \"version\": 5}", &r);
	assert_int_equal(r.outcome, VERIFY_GONE);
	check_user(LEGACY_U1, NULL, &r);
	assert_int_equal(r.outcome, VERIFY_NOT_IN_SERVICE);
	check_user(LEGACY_U1, "{\"_id\": \"u1\", \"name\": \"Ada\", \"deleted\": true}", &r);
	assert_int_equal(r.outcome, VERIFY_NOT_IN_SERVICE);
	check_user(NULL, "{\"_id\": \"u1\", \"name\": \"Ada\"}", &r);
	assert_int_equal(r.outcome, VERIFY_NOT_IN_LEGACY);
	/* deleted: false is no tombstone, and a field like any other. */
	check_user(NULL, "{\"_id\": \"u1\", \"deleted\": false}", &r);
	assert_int_equal(r.outcome, VERIFY_NOT_IN_LEGACY);
	assert_int_equal(r.nfields, 0);

	/* A legacy document the mapping refuses. */
	check_user("{\"_id\": \"u1\", \"emailAddress\": \"a@x.com\", \"email\": \"b@x.com\"}", "{\"_id\": \"u1\"}", &r);
	assert_int_equal(r.outcome, VERIFY_UNMAPPABLE);
	assert_string_equal(r.why, "renaming 'emailAddress' to 'email': the document has 'email' too");
	verify_report_free(&r);
}

/* ---- the verify { } section --------------------------------------------- */

/* Loads text as a configuration file, written to a temporary file at
 * path (removed again): migrate_config_load's result, *cfg or err. */
static int load_text(const char *text, char path[PATH_MAX_TEST], struct migrate_config **cfg, char *err)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(path, PATH_MAX_TEST, "%s/test_verify.XXXXXX", tmp ? tmp : "/tmp");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(close(fd), 0);
	int rc = migrate_config_load(path, cfg, err, ERR_MAX);
	assert_int_equal(unlink(path), 0);
	return rc;
}

/* Loading text must fail with "FILE:line: reason". */
static void expect_config_error(const char *text, int line, const char *reason)
{
	struct migrate_config *cfg = NULL;
	char path[PATH_MAX_TEST], err[ERR_MAX] = "", want[ERR_MAX];
	int rc = load_text(text, path, &cfg, err);
	snprintf(want, sizeof(want), "%s:%d: %s", path, line, reason);
	if (rc != -1 || strcmp(err, want) != 0)
		fail_msg("config:\n%s\nwant: %s\ngot:  %s", text, want, err);
	assert_null(cfg);
}

static void test_config(void **state)
{
	(void)state;
	struct migrate_config *cfg = NULL;
	char path[PATH_MAX_TEST], err[ERR_MAX] = "";

	/* Without a section: nothing, and an http sink cannot be verified. */
	assert_int_equal(load_text(LEGACY_SECTION HTTP_SINK, path, &cfg, err), 0);
	assert_null(cfg->verify_url);
	assert_int_equal(cfg->nverify_ignore, 0);
	assert_null(verify_service_open(cfg, err, sizeof(err)));
	char want[ERR_MAX];
	snprintf(want, sizeof(want),
		 "%s: verify: url is required with sink type http: the service's read API, such as "
		 "http://127.0.0.1:3001/api/users/{id}",
		 path);
	assert_string_equal(err, want);
	migrate_config_free(cfg);

	assert_int_equal(load_text(LEGACY_SECTION HTTP_SINK "verify {\n\turl = \"http://127.0.0.1:3001/api/users/{id}\"\n"
							    "\tignore = { \"updatedAt\",\n\t\t\"version\" }\n}\n",
				   path, &cfg, err),
			 0);
	assert_string_equal(cfg->verify_url, "http://127.0.0.1:3001/api/users/{id}");
	assert_int_equal(cfg->nverify_ignore, 2);
	assert_string_equal(cfg->verify_ignore[0], "updatedAt");
	assert_string_equal(cfg->verify_ignore[1], "version");
	struct verify_service *s = verify_service_open(cfg, err, sizeof(err));
	assert_non_null(s);
	verify_service_close(s);
	migrate_config_free(cfg);

	/* A mongo sink needs no url: its collection is read. */
	assert_int_equal(
		load_text(LEGACY_SECTION MONGO_SINK "verify {\n\tignore = { \"version\" }\n}\n", path, &cfg, err), 0);
	s = verify_service_open(cfg, err, sizeof(err));
	assert_non_null(s);
	verify_service_close(s);
	migrate_config_free(cfg);

	expect_config_error(LEGACY_SECTION HTTP_SINK "verify {\n\turl = \"http://h/api/users\"\n}\n", 10,
			    "verify: url: 'http://h/api/users' has no {id} in its path: every user would go to the "
			    "same URL");
	expect_config_error(LEGACY_SECTION HTTP_SINK "verify {\n\turl = \"https://h/{id}\"\n}\n", 10,
			    "verify: url: 'https://h/{id}' is not an http:// URL (for https, put a local TLS proxy in "
			    "front)");
	expect_config_error(LEGACY_SECTION MONGO_SINK "verify {\n\turl = \"http://h/{id}\"\n}\n", 11,
			    "verify: url: is not used with sink type mongo: verify reads the service's collection");
	expect_config_error(LEGACY_SECTION HTTP_SINK "verify {\n\tignore = { \"a\", \"b\", \"a\" }\n}\n", 10,
			    "verify: ignore: 'a' is listed twice");
	expect_config_error(LEGACY_SECTION HTTP_SINK "verify {\n\n\tignore = { \"plan.tier\" }\n}\n", 11,
			    "verify: ignore: field name 'plan.tier' has a '.': nested fields are not supported");
	expect_config_error(LEGACY_SECTION HTTP_SINK "verify {\n\tcompare = { \"a\" }\n}\n", 10,
			    "no such option 'compare'");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_time),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_user),
		cmocka_unit_test(test_config),
	};
	mongoc_init();
	int failed = cmocka_run_group_tests(tests, NULL, NULL);
	mongoc_cleanup();
	return failed;
}
