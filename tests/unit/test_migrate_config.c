/*
 * Unit tests for migrator/config.c: the shipped conf/migrate.conf, the
 * defaults, and errors as "FILE:LINE: reason" for each kind of mistake.
 * Each test writes its file into a private mkdtemp directory.
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
#include "tests/unit/conf_files.h"


/* The sections every file needs, seven lines. Tests put them last, so
 * that what they check starts on line 1. */
#define LEGACY "legacy {\n\turi = \"mongodb://127.0.0.1/\"\n\tdatabase = \"app\"\n}\n"
#define SINK "sink {\n\ttype = \"http\"\n\turl = \"http://127.0.0.1:3001/import/{id}\"\n}\n"
#define REQUIRED LEGACY SINK

static int group_setup(void **state)
{
	mongoc_init();
	return conf_files_setup(state, "test_migrate_config", "migrate.conf");
}

static int group_teardown(void **state)
{
	mongoc_cleanup();
	return conf_files_teardown(state);
}

static struct migrate_config *load_file(const char *path)
{
	char err[CONF_ERR_MAX] = "";
	struct migrate_config *cfg = NULL;
	if (migrate_config_load(path, &cfg, err, sizeof(err)) != 0)
		fail_msg("migrate_config_load(%s) failed: %s", path, err);
	assert_non_null(cfg);
	return cfg;
}

/* Loading text must fail as conf_expect_message says, leaving *out
 * alone. */
static void expect_error(const struct conf_files *f, const char *text, int line, const char *fragment)
{
	static struct migrate_config untouched;
	struct migrate_config *cfg = &untouched;
	char err[CONF_ERR_MAX] = "";
	conf_files_write(f, text);
	int rc = migrate_config_load(f->path, &cfg, err, sizeof(err));
	conf_expect_message(f->path, text, line, fragment, rc, err);
	assert_ptr_equal(cfg, &untouched);
}

static void expect_errors(const struct conf_files *f, const struct error_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		expect_error(f, cases[i].text, cases[i].line, cases[i].fragment);
}

#define EXPECT_ERRORS(f, cases) expect_errors(f, cases, sizeof(cases) / sizeof(cases[0]))

static void test_shipped_config(void **state)
{
	(void)state;
	const char *srcdir = getenv("CUTOVER_SRCDIR");
	char path[4096];
	snprintf(path, sizeof(path), "%s/conf/migrate.conf", srcdir ? srcdir : ".");
	struct migrate_config *cfg = load_file(path);
	assert_string_equal(cfg->path, path);
	assert_string_equal(cfg->redis_url, "redis://127.0.0.1:6379/0");
	assert_string_equal(cfg->redis_prefix, "cutover");
	assert_string_equal(cfg->legacy.database, "app");
	assert_string_equal(cfg->legacy.collection, "users");
	assert_int_equal(cfg->id_type, LEGACY_ID_STRING);
	assert_int_equal(cfg->sink, SINK_HTTP);
	assert_string_equal(cfg->sink_url, "http://127.0.0.1:3001/internal/import/users/{id}");
	assert_int_equal(cfg->sink_timeout_ms, 5000);
	assert_string_equal(cfg->version_field, "updatedAt");
	assert_int_equal(cfg->mapping.nkeep, 0);
	/* passwordHash, legacyFlags, and sync-back's state field */
	assert_int_equal(cfg->mapping.ndrop, 3);
	assert_string_equal(cfg->mapping.drop[2], "_cutover");
	assert_int_equal(cfg->mapping.nrenames, 1);
	assert_string_equal(cfg->mapping.renames[0].to, "email");
	assert_int_equal(bson_count_keys(cfg->mapping.defaults), 2);
	assert_int_equal(cfg->batch, 100);
	assert_int_equal(cfg->block_ms, 1000);
	assert_int_equal(cfg->attempts, 5);
	assert_int_equal(cfg->backoff_ms, 200);
	assert_int_equal(cfg->backoff_max_ms, 30000);
	assert_int_equal(cfg->claim_idle_ms, 60000);
	assert_string_equal(cfg->metrics_file, "/run/cutover/migrate-metrics.json");
	assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
	assert_string_equal(cfg->syncback.stream, "cutover:service:events");
	assert_int_equal(cfg->syncback.deletes, SYNCBACK_TOMBSTONE);
	assert_string_equal(cfg->syncback.tombstone_field, "deleted");
	assert_string_equal(cfg->syncback.state_field, "_cutover");
	assert_int_equal(cfg->syncback.w, -1);
	assert_int_equal(cfg->syncback.wtimeout_ms, 5000);
	assert_string_equal(cfg->syncback.metrics_file, "/run/cutover/syncback-metrics.json");
	assert_int_equal(cfg->syncback.mapping.ndrop, 4);
	assert_string_equal(cfg->syncback.mapping.renames[0].to, "emailAddress");
	migrate_config_free(cfg);
}

static void test_defaults(void **state)
{
	struct conf_files *f = *state;
	char host[256] = "", want[300];
	conf_files_write(f, REQUIRED);
	struct migrate_config *cfg = load_file(f->path);
	assert_string_equal(cfg->redis_prefix, "cutover");
	assert_string_equal(cfg->legacy.collection, "users");
	assert_null(cfg->version_field);
	assert_null(cfg->metrics_file);
	assert_int_equal(cfg->batch, 100);
	assert_int_equal(cfg->claim_idle_ms, 60000);
	gethostname(host, sizeof(host) - 1);
	snprintf(want, sizeof(want), "%s-%ld", host, (long)getpid());
	assert_string_equal(cfg->consumer, want);
	migrate_config_free(cfg);
}

static void test_mongo_sink(void **state)
{
	struct conf_files *f = *state;
	conf_files_write(f, LEGACY "sink {\n\ttype = \"mongo\"\n\turi = \"mongodb://svc/\"\n\tdatabase = \"users\"\n}\n"
			     "version_field = \"updatedAt\"\n"
			     "mapping {\n\trename = { \"updatedAt:updated_at\" }\n}\nconsumer = \"m-1\"\n");
	struct migrate_config *cfg = load_file(f->path);
	assert_int_equal(cfg->sink, SINK_MONGO);
	assert_string_equal(cfg->service.uri, "mongodb://svc/");
	assert_string_equal(cfg->service.database, "users");
	assert_string_equal(cfg->service.collection, "users");
	assert_string_equal(mapping_output_name(&cfg->mapping, cfg->version_field), "updated_at");
	assert_string_equal(cfg->consumer, "m-1");
	migrate_config_free(cfg);
}

static void test_errors(void **state)
{
	struct conf_files *f = *state;
	const struct error_case cases[] = {
		{ "batch = 0\n" REQUIRED, 1, "batch: must be in 1..10000, not 0" },
		{ "batch = 0x10\n" REQUIRED, 1, "batch: '0x10' is not a decimal number" },
		{ "block = 0\n" REQUIRED, 1, "block: must be in 1..60000" },
		{ "claim_idle = 10\n" REQUIRED, 1, "claim_idle: must be in 1000.." },
		{ "# a comment\n\n// another\nbatch = 5\nbatch = 6\n" REQUIRED, 5, "batch: set twice (first on line 4)" },
		{ "retry {\n\tattempts = 0\n}\n" REQUIRED, 2, "retry: attempts: must be in 1..1000" },
		{ "retry {\n\tbackoff = 500\n\tbackoff_max = 100\n}\n" REQUIRED, 3, "backoff_max: must be in 500.." },
		{ "redis {\n\turl = \"http://x\"\n}\n" REQUIRED, 2, "redis: url:" },
		{ "redis {\n\tprefix = \"a b\"\n}\n" REQUIRED, 2, "redis: prefix: must be 1 to 64 visible" },
		{ SINK, 0, "legacy: uri is required" },
		{ "legacy {\n\turi = \"mysql://x\"\n\tdatabase = \"a\"\n}\n" SINK, 2, "legacy: uri: not a MongoDB URI" },
		{ "legacy {\n\turi = \"mongodb://x/\"\n}\n" SINK, 1, "legacy: database is required" },
		{ "legacy {\n\turi = \"mongodb://x/\"\n\tdatabase = \"a.b\"\n}\n" SINK, 3,
		  "legacy: database: 'a.b' is not a usable name" },
		{ "legacy {\n\turi = \"mongodb://x/\"\n\tdatabase = \"a\"\n\tid_type = \"uuid\"\n}\n" SINK, 4,
		  "id_type: must be string or objectid" },
		{ LEGACY, 0, "sink: type is required" },
		{ LEGACY "sink {\n\ttype = \"kafka\"\n}\n", 6, "sink: type: must be http or mongo, not 'kafka'" },
		{ LEGACY "sink {\n\ttype = \"http\"\n}\n", 5, "sink: url is required" },
		{ LEGACY "sink {\n\ttype = \"http\"\n\turl = \"https://h/{id}\"\n}\n", 7, "is not an http:// URL" },
		{ LEGACY "sink {\n\ttype = \"http\"\n\turl = \"http://h/users\"\n}\n", 7, "has no {id} in its path" },
		{ LEGACY "sink {\n\ttype = \"http\"\n\turl = \"http://{id}/x\"\n}\n", 7, "has no {id} in its path" },
		{ LEGACY "sink {\n\ttype = \"http\"\n\turl = \"http://u:p@h/{id}\"\n}\n", 7, "user information" },
		{ LEGACY "sink {\n\ttype = \"http\"\n\turl = \"http://h/{id}\"\n\tdatabase = \"d\"\n}\n", 8,
		  "sink: database: is not an option of sink type http" },
		{ LEGACY "sink {\n\ttype = \"mongo\"\n\turl = \"http://h/{id}\"\n}\n", 7,
		  "sink: url: is not an option of sink type mongo" },
		{ LEGACY "sink {\n\ttype = \"mongo\"\n\turi = \"mongodb://h/\"\n}\n", 5, "sink: database is required" },
		{ LEGACY "sink {\n\ttype = \"http\"\n\turl = \"http://h/{id}\"\n\ttimeout = 0\n}\n", 8,
		  "sink: timeout: must be in 1.." },
		{ "version_field = \"a.b\"\n" REQUIRED, 1, "version_field: field name 'a.b' has a '.'" },
		{ "version_field = \"v\"\nmapping {\n\tdrop = { \"v\" }\n}\n" LEGACY
		  "sink {\n\ttype = \"mongo\"\n\turi = \"mongodb://h/\"\n\tdatabase = \"d\"\n}\n",
		  1, "'v' is left out by the mapping, and the mongo sink's version guard needs it" },
		{ "mapping {\n\tkeep = { \"a\",\n\t\t\"b\" }\n\tdrop = { \"a\" }\n}\n" REQUIRED, 4,
		  "mapping: drop: 'a' is both kept and dropped" },
		{ "mapping {\n\t# names\n\trename = { \"a:b\", \"c:b\" }\n}\n" REQUIRED, 3,
		  "mapping: rename: rename 'c:b': 'b' is already the new name of 'a'" },
		{ "mapping {\n\tdefault = { 'x:tru' }\n}\n" REQUIRED, 2,
		  "mapping: default: default for 'x': 'tru' is not a JSON value" },
		{ "mapping {\n\tdefault = { \"x:{\\\"a\\\":}\" }\n}\n" REQUIRED, 2, "is not a JSON value" },
		{ "mapping {\n\tkeep = { \"a\", \"b\" }\n\trename = { \"a:b\" }\n}\n" REQUIRED, 3,
		  "'b' is kept too" },
		{ "consumer = \"two words\"\n" REQUIRED, 1, "consumer: must be 1 to 128 visible characters" },
		{ "metrics_file = \"/run/\"\n" REQUIRED, 1, "metrics_file: must name a file" },
		{ "log_level = \"loud\"\n" REQUIRED, 1, "log_level: must be error, warn, info or debug" },
		{ "unknown = 1\n" REQUIRED, 1, "no such option 'unknown'" },
		{ "mapping {\n\tkeep = {\n" REQUIRED, 3, "unexpected token" },
	};
	EXPECT_ERRORS(f, cases);
}

static void test_missing_file(void **state)
{
	(void)state;
	struct migrate_config *cfg = NULL;
	char err[CONF_ERR_MAX] = "";
	assert_int_equal(migrate_config_load("/nonexistent/migrate.conf", &cfg, err, sizeof(err)), -1);
	assert_string_equal(err, "/nonexistent/migrate.conf: cannot open: No such file or directory");
	assert_null(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shipped_config), cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_mongo_sink),     cmocka_unit_test(test_errors),
		cmocka_unit_test(test_missing_file),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
