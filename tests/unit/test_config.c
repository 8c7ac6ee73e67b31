/*
 * Unit tests for proxy/config.c: the shipped file, defaults, syntax and
 * validation errors with their lines, path templates and reference
 * counting. Each test writes its configuration into a private mkdtemp
 * directory, removed at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "proxy/proxy.h"
#include "tests/unit/conf_files.h"


/* The two upstreams every file needs, three lines each. Tests mostly put
 * them last, so that what they check starts on line 1. */
#define LEGACY "upstream legacy {\n\taddress = \"127.0.0.1:3000\"\n}\n"
#define SERVICE "upstream service {\n\taddress = \"127.0.0.1:3001\"\n}\n"
#define UPSTREAMS LEGACY SERVICE

/* A valid route, five lines. */
#define ROUTE_R "route r {\n\tpath = \"/a/{id}\"\n\tuser = { \"path:id\" }\n\tread_flag = \"f\"\n}\n"

/* The first four lines of a valid route, for a fifth to be added. */
#define ROUTE_HEAD "route r {\n\tpath = \"/\"\n\tuser = { \"header:X-User\" }\n\tread_flag = \"f\"\n"

/* A file with one route whose path (on line 2) is the %s. */
#define PATH_ROUTE \
	"route r {\n\tpath = \"%s\"\n\tuser = { \"header:X-User\" }\n\tread_flag = \"f\"\n}\n" UPSTREAMS

/* A file with one route whose only user source (on line 3) is src. */
#define SOURCE_ROUTE(path, src) "route r {\n\tpath = \"" path "\"\n\tuser = { \"" src "\" }\n}\n" UPSTREAMS

static int group_setup(void **state)
{
	return conf_files_setup(state, "test_config", "cutover.conf");
}

static struct proxy_config *load_file(const char *path)
{
	char err[CONF_ERR_MAX] = "";
	struct proxy_config *cfg = NULL;
	if (config_load(path, &cfg, err, sizeof(err)) != 0)
		fail_msg("config_load(%s) failed: %s", path, err);
	assert_non_null(cfg);
	assert_int_equal(atomic_load(&cfg->refs), 1);
	return cfg;
}

static struct proxy_config *load_text(const struct conf_files *f, const char *text)
{
	conf_files_write(f, text);
	return load_file(f->path);
}

/* Loading path must fail as conf_expect_message says, and must leave
 * *out alone. */
static void expect_path_error(const char *path, const char *text, int line, const char *fragment)
{
	static struct proxy_config untouched;
	struct proxy_config *cfg = &untouched;
	char err[CONF_ERR_MAX] = "";
	int rc = config_load(path, &cfg, err, sizeof(err));
	conf_expect_message(path, text, line, fragment, rc, err);
	assert_ptr_equal(cfg, &untouched);
}

static void expect_error(const struct conf_files *f, const char *text, int line, const char *fragment)
{
	conf_files_write(f, text);
	expect_path_error(f->path, text, line, fragment);
}

static void expect_errors(const struct conf_files *f, const struct error_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		expect_error(f, cases[i].text, cases[i].line, cases[i].fragment);
}

#define EXPECT_ERRORS(f, cases) expect_errors(f, cases, sizeof(cases) / sizeof(cases[0]))

static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
}

static void assert_upstream(const struct upstream_config *u, const char *host, int port)
{
	assert_string_equal(u->host, host);
	assert_int_equal(u->port, port);
	assert_int_equal(u->connect_timeout_ms, 1000);
	assert_int_equal(u->read_timeout_ms, 30000);
	assert_int_equal(u->write_timeout_ms, 30000);
	assert_int_equal(u->keepalive, 64);
}

static void assert_segment(const struct route *r, size_t i, const char *literal, const char *param)
{
	assert_true(i < r->nsegments);
	if (literal)
		assert_string_equal(r->segments[i].literal, literal);
	else
		assert_null(r->segments[i].literal);
	if (param)
		assert_string_equal(r->segments[i].param, param);
	else
		assert_null(r->segments[i].param);
}

static void assert_source(const struct route *r, size_t i, enum user_source_kind kind, const char *name)
{
	assert_true(i < r->nsources);
	assert_int_equal(r->sources[i].kind, kind);
	assert_string_equal(r->sources[i].name, name);
}

/* The settings the shipped file leaves at their defaults, as both it and
 * a file with nothing but the upstreams load. */
static void assert_default_settings(const struct proxy_config *cfg)
{
	assert_int_equal(cfg->nlisten, 1);
	assert_string_equal(cfg->listen[0].host, "0.0.0.0");
	assert_int_equal(cfg->listen[0].port, 8080);
	assert_string_equal(cfg->admin.host, "127.0.0.1");
	assert_int_equal(cfg->admin.port, 9901);
	assert_null(cfg->admin_token);
	assert_int_equal(cfg->workers, online_cpus());
	assert_string_equal(cfg->redis_url, "redis://127.0.0.1:6379/0");
	assert_string_equal(cfg->redis_prefix, "cutover");
	assert_upstream(&cfg->upstreams[UPSTREAM_LEGACY], "127.0.0.1", 3000);
	assert_upstream(&cfg->upstreams[UPSTREAM_SERVICE], "127.0.0.1", 3001);
	assert_int_equal(cfg->default_upstream, UPSTREAM_LEGACY);
	assert_null(cfg->force_header);
	assert_null(cfg->force_secret);
	assert_true(cfg->route_header);
	assert_int_equal(cfg->max_header_bytes, 16384);
	assert_int_equal(cfg->max_body_bytes, 1048576);
	assert_int_equal(cfg->client_timeout_ms, 60000);
	assert_int_equal(cfg->drain_timeout_ms, 10000);
	assert_int_equal(cfg->ready_wait_ms, 5000);
	assert_string_equal(cfg->access_log, "stderr");
	assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
}

static void test_shipped_config(void **state)
{
	(void)state;
	const char *srcdir = getenv("CUTOVER_SRCDIR");
	char path[4096];
	snprintf(path, sizeof(path), "%s/conf/cutover.conf", srcdir ? srcdir : ".");
	struct proxy_config *cfg = load_file(path);
	assert_string_equal(cfg->path, path);
	assert_default_settings(cfg);

	assert_int_equal(cfg->nroutes, 4);
	const struct route *r = &cfg->routes[0];
	assert_string_equal(r->name, "user");
	assert_int_equal(r->methods, METHOD_GET | METHOD_HEAD | METHOD_PUT | METHOD_PATCH | METHOD_DELETE);
	assert_string_equal(r->path, "/api/users/{id}");
	assert_int_equal(r->nsegments, 3);
	assert_segment(r, 0, "api", NULL);
	assert_segment(r, 1, "users", NULL);
	assert_segment(r, 2, NULL, "id");
	assert_false(r->prefix);
	assert_int_equal(r->nsources, 1);
	assert_source(r, 0, USER_FROM_PATH, "id");
	assert_string_equal(r->read_flag, "users-read");
	assert_string_equal(r->write_flag, "users-write");
	assert_int_equal(r->no_user, UPSTREAM_LEGACY);
	assert_true(r->read_fallback);
	assert_int_equal(r->breaker_failures, 5);
	assert_int_equal(r->breaker_open_ms, 10000);

	r = &cfg->routes[1];
	assert_string_equal(r->name, "user-subresources");
	assert_int_equal(r->methods, METHOD_GET | METHOD_HEAD | METHOD_POST | METHOD_PUT | METHOD_PATCH |
					     METHOD_DELETE);
	assert_true(r->prefix);
	assert_int_equal(r->nsegments, 3);
	assert_segment(r, 2, NULL, "id");
	assert_false(r->read_fallback);

	r = &cfg->routes[2];
	assert_string_equal(r->name, "me");
	assert_int_equal(r->methods, METHODS_READ);
	assert_int_equal(r->nsources, 3);
	assert_source(r, 0, USER_FROM_HEADER, "X-User-Id");
	assert_source(r, 1, USER_FROM_COOKIE, "uid");
	assert_source(r, 2, USER_FROM_JWT, "sub");
	assert_string_equal(r->read_flag, "users-read");
	assert_null(r->write_flag);

	r = &cfg->routes[3];
	assert_string_equal(r->name, "create-user");
	assert_int_equal(r->methods, METHOD_POST);
	assert_source(r, 0, USER_FROM_BODY, "email");
	assert_null(r->read_flag);
	assert_string_equal(r->write_flag, "users-write");
	config_unref(cfg);
}

static void test_defaults(void **state)
{
	const struct conf_files *f = *state;
	struct proxy_config *cfg = load_text(f, UPSTREAMS);
	assert_string_equal(cfg->path, f->path);
	assert_default_settings(cfg);
	assert_int_equal(cfg->nroutes, 0);
	assert_null(cfg->routes);
	config_unref(cfg);

	cfg = load_text(f, "route r {\n\tpath = \"/a\"\n\tuser = { \"header:X-User\" }\n\twrite_flag = \"w\"\n}\n"
			UPSTREAMS);
	assert_int_equal(cfg->nroutes, 1);
	const struct route *r = &cfg->routes[0];
	assert_int_equal(r->methods, METHOD_GET | METHOD_HEAD | METHOD_POST | METHOD_PUT | METHOD_PATCH |
					     METHOD_DELETE);
	assert_null(r->read_flag);
	assert_string_equal(r->write_flag, "w");
	assert_int_equal(r->no_user, UPSTREAM_LEGACY);
	assert_false(r->read_fallback);
	assert_int_equal(r->breaker_failures, 5);
	assert_int_equal(r->breaker_open_ms, 10000);
	config_unref(cfg);
}

/* Every option set to something other than its default. */
static void test_every_option(void **state)
{
	const struct conf_files *f = *state;
	struct proxy_config *cfg = load_text(f,
		"listen = { \"[::1]:8080\", \"my-host_1.example:65535\" }\n"
		"admin_listen = \"localhost:1\"\n"
		"admin_token = \"t0ken\"\n"
		"workers = 1024\n"
		"redis {\n\turl = \"unix:///run/redis.sock?db=2\"\n\tprefix = \"app:cutover\"\n}\n"
		"upstream legacy {\n\taddress = \"10.0.0.1:80\"\n\tconnect_timeout = 1\n\tread_timeout = 3600000\n"
		"\twrite_timeout = 2\n\tkeepalive = 0\n}\n"
		"upstream service {\n\taddress = \"[fd00::2]:81\"\n\tkeepalive = 10000\n}\n"
		"default = \"service\"\n"
		"force_header = \"X-Cutover-Force\"\n"
		"force_secret = \"0123456789abcdef\"\n"
		"route_header = false\n"
		"limits {\n\theader_bytes = 1024\n\tbody_bytes = 0\n\tclient_timeout = 1\n\tdrain_timeout = 3600000\n"
		"\tready_wait = 7\n}\n"
		"access_log = \"/var/log/cutover/access.log\"\n"
		"log_level = \"debug\"\n"
		"route r {\n\tmethods = { \"OPTIONS\", \"DELETE\" }\n\tpath = \"/\"\n"
		"\tuser = { \"query:user_id\", \"body:user.id\" }\n\tread_flag = \"a.b_c-1\"\n\tno_user = \"service\"\n"
		"\tread_fallback = true\n\tbreaker_failures = 1000\n\tbreaker_open = 1\n}\n");
	assert_int_equal(cfg->nlisten, 2);
	assert_string_equal(cfg->listen[0].host, "::1");
	assert_int_equal(cfg->listen[0].port, 8080);
	assert_string_equal(cfg->listen[1].host, "my-host_1.example");
	assert_int_equal(cfg->listen[1].port, 65535);
	assert_string_equal(cfg->admin.host, "localhost");
	assert_int_equal(cfg->admin.port, 1);
	assert_string_equal(cfg->admin_token, "t0ken");
	assert_int_equal(cfg->workers, 1024);
	assert_string_equal(cfg->redis_url, "unix:///run/redis.sock?db=2");
	assert_string_equal(cfg->redis_prefix, "app:cutover");
	const struct upstream_config *u = &cfg->upstreams[UPSTREAM_LEGACY];
	assert_string_equal(u->host, "10.0.0.1");
	assert_int_equal(u->port, 80);
	assert_int_equal(u->connect_timeout_ms, 1);
	assert_int_equal(u->read_timeout_ms, 3600000);
	assert_int_equal(u->write_timeout_ms, 2);
	assert_int_equal(u->keepalive, 0);
	assert_string_equal(cfg->upstreams[UPSTREAM_SERVICE].host, "fd00::2");
	assert_int_equal(cfg->upstreams[UPSTREAM_SERVICE].keepalive, 10000);
	assert_int_equal(cfg->default_upstream, UPSTREAM_SERVICE);
	assert_string_equal(cfg->force_header, "X-Cutover-Force");
	assert_string_equal(cfg->force_secret, "0123456789abcdef");
	assert_false(cfg->route_header);
	assert_int_equal(cfg->max_header_bytes, 1024);
	assert_int_equal(cfg->max_body_bytes, 0);
	assert_int_equal(cfg->client_timeout_ms, 1);
	assert_int_equal(cfg->drain_timeout_ms, 3600000);
	assert_int_equal(cfg->ready_wait_ms, 7);
	assert_string_equal(cfg->access_log, "/var/log/cutover/access.log");
	assert_int_equal(cfg->log_level, LOG_LEVEL_DEBUG);
	const struct route *r = &cfg->routes[0];
	assert_int_equal(r->methods, METHOD_OPTIONS | METHOD_DELETE);
	assert_int_equal(r->nsegments, 1);
	assert_false(r->prefix);
	assert_source(r, 0, USER_FROM_QUERY, "user_id");
	assert_source(r, 1, USER_FROM_BODY, "user.id");
	assert_string_equal(r->read_flag, "a.b_c-1");
	assert_int_equal(r->no_user, UPSTREAM_SERVICE);
	assert_true(r->read_fallback);
	assert_int_equal(r->breaker_failures, 1000);
	assert_int_equal(r->breaker_open_ms, 1);
	config_unref(cfg);

	cfg = load_text(f, "workers = 3\naccess_log = \"off\"\n" UPSTREAMS);
	assert_int_equal(cfg->workers, 3);
	assert_string_equal(cfg->access_log, "off");
	config_unref(cfg);
}

static void test_syntax_errors(void **state)
{
	static const struct error_case cases[] = {
		{ "workers = 2\nlimits {\n\theader_bytes = 4096\n\tbody_bytes 5\n}\n" UPSTREAMS, 4,
		  "missing equal sign after option 'body_bytes'" },
		{ "workers = 2\n\n}\n" UPSTREAMS, 3, "unexpected closing brace" },
		{ "workers = 2\nadmin_token = 'abc\nworkers = 3\n", 4, "unterminated string constant" },
		{ "workers = 2\nroute {\n}\n", 2, "missing title for section 'route'" },
		{ "workers = 2\nworkers = 3\n" UPSTREAMS, 2, "workers: set twice (first on line 1)" },
		{ ROUTE_R "route s {\n\tread_flag = \"f\"\n\tread_flag = \"g\"\n}\n" UPSTREAMS, 8,
		  "route s: read_flag: set twice (first on line 7)" },
	};
	EXPECT_ERRORS(*state, cases);
}

/* libconfuse 3.3 miscounts lines after comments and refuses comments in
 * lists; config.c blanks comments first, so neither shows. */
static void test_lines_after_comments(void **state)
{
	static const struct error_case cases[] = {
		{ "# one\n# two\nworkers = 2 # three\n// four\n/* five\n six */\nbogus = 1\n" UPSTREAMS, 7,
		  "no such option 'bogus'" },
		{ "listen = { \"127.0.0.1:1\", # first\n \"127.0.0.1:2\" }\nadmin_token = \"a#b//c/*d\"\nbogus = 1\n", 4,
		  "no such option 'bogus'" },
	};
	EXPECT_ERRORS(*state, cases);
	struct proxy_config *cfg = load_text(*state, "# comment\nadmin_token = \"t#k\" // after\n" UPSTREAMS);
	assert_non_null(cfg);
	assert_string_equal(cfg->admin_token, "t#k");
	config_unref(cfg);
}

static void test_unknown_options(void **state)
{
	static const struct error_case cases[] = {
		{ "workers = 2\nbogus = 1\n" UPSTREAMS, 2, "no such option 'bogus'" },
		{ "upstream legacy {\n\taddress = \"127.0.0.1:3000\"\n\ttimeout = 5\n}\n" SERVICE, 3,
		  "no such option 'timeout'" },
		{ UPSTREAMS "route r {\n\tpath = \"/\"\n\tflag = \"f\"\n}\n", 9, "no such option 'flag'" },
		{ "redis2 {\n}\n", 1, "no such option 'redis2'" },
	};
	EXPECT_ERRORS(*state, cases);
}

static void test_numbers(void **state)
{
	static const struct error_case cases[] = {
		{ "workers = 1025\n" UPSTREAMS, 1, "workers: must be in 0..1024, not 1025" },
		{ "workers = -1\n" UPSTREAMS, 1, "workers: '-1' is not a decimal number" },
		{ "workers = 0x10\n" UPSTREAMS, 1, "workers: '0x10' is not a decimal number" },
		{ "workers = 4k\n" UPSTREAMS, 1, "workers: '4k' is not a decimal number" },
		{ "upstream legacy {\n\taddress = \"127.0.0.1:3000\"\n\tconnect_timeout = 0\n}\n" SERVICE, 3,
		  "upstream legacy: connect_timeout: must be in 1..3600000, not 0" },
		{ "upstream legacy {\n\taddress = \"127.0.0.1:3000\"\n\tread_timeout = 3600001\n}\n" SERVICE, 3,
		  "upstream legacy: read_timeout: must be in 1..3600000, not 3600001" },
		{ LEGACY "upstream service {\n\taddress = \"127.0.0.1:3001\"\n\twrite_timeout = 0\n}\n", 6,
		  "upstream service: write_timeout: must be in 1..3600000" },
		{ LEGACY "upstream service {\n\taddress = \"127.0.0.1:3001\"\n\tkeepalive = 10001\n}\n", 6,
		  "upstream service: keepalive: must be in 0..10000, not 10001" },
		{ "limits {\n\theader_bytes = 1023\n}\n" UPSTREAMS, 2,
		  "limits: header_bytes: must be in 1024..1048576" },
		{ "limits {\n\theader_bytes = 1048577\n}\n" UPSTREAMS, 2,
		  "limits: header_bytes: must be in 1024..1048576" },
		{ "limits {\n\tbody_bytes = 1073741825\n}\n" UPSTREAMS, 2,
		  "limits: body_bytes: must be in 0..1073741824" },
		{ "limits {\n\n\tclient_timeout = 0\n}\n" UPSTREAMS, 3,
		  "limits: client_timeout: must be in 1..3600000" },
		{ "limits {\n\tdrain_timeout = 0\n}\n" UPSTREAMS, 2,
		  "limits: drain_timeout: must be in 1..3600000" },
		{ "limits {\n\tready_wait = 3600001\n}\n" UPSTREAMS, 2,
		  "limits: ready_wait: must be in 1..3600000" },
		{ ROUTE_HEAD "\tbreaker_failures = 0\n}\n" UPSTREAMS, 5,
		  "route r: breaker_failures: must be in 1..1000, not 0" },
		{ ROUTE_HEAD "\tbreaker_open = 3600001\n}\n" UPSTREAMS, 5,
		  "route r: breaker_open: must be in 1..3600000" },
	};
	EXPECT_ERRORS(*state, cases);
}

static void test_addresses(void **state)
{
	static const struct error_case cases[] = {
		{ "listen = { \"0.0.0.0\" }\n" UPSTREAMS, 1, "listen: '0.0.0.0' is not host:port" },
		{ "listen = { \"0.0.0.0:8080\", \"0.0.0.0:0\" }\n" UPSTREAMS, 1,
		  "listen: port '0' is not in 1..65535" },
		{ "listen = { \"0.0.0.0:65536\" }\n" UPSTREAMS, 1, "port '65536' is not in 1..65535" },
		{ "listen = { \"0.0.0.0:http\" }\n" UPSTREAMS, 1, "port 'http' is not in 1..65535" },
		{ "listen = { \":8080\" }\n" UPSTREAMS, 1, "listen: '' is not a host name or IPv4 address" },
		{ "listen = { \"::1:8080\" }\n" UPSTREAMS, 1, "IPv6 goes in brackets: [::1]:8080" },
		{ "listen = { \"bad host:8080\" }\n" UPSTREAMS, 1, "'bad host' is not a host name" },
		/* libconfuse reports nothing for an empty list: no line to give */
		{ "listen = {}\n" UPSTREAMS, 0, "listen: needs at least one address" },
		{ "workers = 1\nadmin_listen = \"[::g]:9901\"\n" UPSTREAMS, 2,
		  "admin_listen: '::g' is not an IPv6 address" },
		{ "admin_listen = \"[::1]\"\n" UPSTREAMS, 1, "admin_listen: '[::1]' is not [IPv6]:port" },
		{ "admin_listen = \"[]:80\"\n" UPSTREAMS, 1, "is not [IPv6]:port" },
		{ "upstream legacy {\n\taddress = \"legacy\"\n}\n" SERVICE, 2,
		  "upstream legacy: address: 'legacy' is not host:port" },
		{ LEGACY "\nupstream service {\n\tkeepalive = 1\n}\n", 5,
		  "upstream service: address is required" },
	};
	EXPECT_ERRORS(*state, cases);
}

static void test_upstream_sections(void **state)
{
	static const struct error_case cases[] = {
		{ UPSTREAMS "upstream canary {\n\taddress = \"127.0.0.1:3002\"\n}\n", 7,
		  "upstream canary: an upstream is named legacy or service" },
		{ LEGACY, 0, "upstream service { address = \"host:port\" } is missing" },
		{ "workers = 1\n", 0, "upstream legacy { address = \"host:port\" } is missing" },
		{ UPSTREAMS "upstream legacy {\n\taddress = \"127.0.0.1:3002\"\n}\n", 7,
		  "found duplicate title 'legacy'" },
	};
	EXPECT_ERRORS(*state, cases);
}

static void test_choices(void **state)
{
	static const struct error_case cases[] = {
		{ "default = \"new\"\n" UPSTREAMS, 1, "default: must be legacy or service, not 'new'" },
		{ ROUTE_HEAD "\tno_user = \"both\"\n}\n" UPSTREAMS, 5,
		  "route r: no_user: must be legacy or service, not 'both'" },
		{ "workers = 1\nlog_level = \"verbose\"\n" UPSTREAMS, 2,
		  "log_level: must be error, warn, info or debug, not 'verbose'" },
		{ "access_log = \"logs/access.log\"\n" UPSTREAMS, 1,
		  "access_log: must be \"stderr\", \"off\" or an absolute path, not 'logs/access.log'" },
		{ "admin_token = \"two words\"\n" UPSTREAMS, 1,
		  "admin_token: must be visible characters, without spaces" },
		{ "route_header = maybe\n" UPSTREAMS, 1, "invalid boolean value for option 'route_header'" },
	};
	EXPECT_ERRORS(*state, cases);
}

static void test_redis(void **state)
{
	static const struct error_case cases[] = {
		{ "redis {\n\tprefix = \"p\"\n\turl = \"http://localhost\"\n}\n" UPSTREAMS, 3,
		  "redis: url: Redis URL must start with redis:// or unix://" },
		{ "redis {\n\turl = \"redis://localhost:99999\"\n}\n" UPSTREAMS, 2,
		  "redis: url: invalid port in Redis URL" },
		{ "redis {\n\tprefix = \"\"\n}\n" UPSTREAMS, 2,
		  "redis: prefix: must be 1 to 64 visible characters" },
		{ "redis {\n\tprefix = \"my prefix\"\n}\n" UPSTREAMS, 2, "redis: prefix: must be 1 to 64" },
	};
	EXPECT_ERRORS(*state, cases);
}

static void test_forcing(void **state)
{
	static const struct error_case cases[] = {
		{ "force_header = \"X-Force\"\n" UPSTREAMS, 1,
		  "force_header: force_header and force_secret go together: set both or neither" },
		{ "workers = 1\nforce_secret = \"0123456789abcdef\"\n" UPSTREAMS, 2,
		  "force_secret: force_header and force_secret go together" },
		{ "force_header = \"X-Force\"\nforce_secret = \"0123456789abcde\"\n" UPSTREAMS, 2,
		  "force_secret: must be at least 16 visible characters, without spaces" },
		{ "force_header = \"X-Force\"\nforce_secret = \"0123456789 abcdef\"\n" UPSTREAMS, 2,
		  "force_secret: must be at least 16" },
		{ "force_header = \"X Force\"\nforce_secret = \"0123456789abcdef\"\n" UPSTREAMS, 1,
		  "force_header: 'X Force' is not a header name" },
	};
	EXPECT_ERRORS(*state, cases);
}

static void test_route_rules(void **state)
{
	static const struct error_case cases[] = {
		{ UPSTREAMS "route r {\n\tpath = \"/a\"\n\tuser = { \"header:X-User\" }\n}\n", 7,
		  "route r: routes nothing to the service: set read_flag, write_flag or both" },
		{ "route r {\n\tpath = \"/a\"\n\tuser = { \"header:X-User\" }\n\tread_flag = \"users read\"\n}\n"
		  UPSTREAMS,
		  4,
		  "route r: read_flag: flag name 'users read' may contain only letters, digits" },
		{ "route r {\n\tpath = \"/a\"\n\tuser = { \"header:X-User\" }\n\twrite_flag = "
		  "\"a12345678901234567890123456789012345678901234567890123456789012345\"\n}\n" UPSTREAMS,
		  4, "route r: write_flag: flag name 'a1234" },
		{ "route r {\n\tuser = { \"header:X-User\" }\n\tread_flag = \"f\"\n}\n" UPSTREAMS, 1,
		  "route r: path is required" },
		{ "route r {\n\tmethods = { \"GET\", \"TRACE\" }\n\tpath = \"/a\"\n}\n" UPSTREAMS, 2,
		  "route r: methods: 'TRACE' is not one of GET HEAD POST PUT PATCH DELETE OPTIONS" },
		{ "route r {\n\tmethods = { \"get\" }\n}\n" UPSTREAMS, 2, "methods: 'get' is not one of" },
		{ "\nroute r {\n\tmethods = {}\n\tpath = \"/a\"\n}\n" UPSTREAMS, 2,
		  "route r: methods: needs at least one method" },
		{ "route r {\n\tpath = \"/a\"\n\tread_flag = \"f\"\n}\n" UPSTREAMS, 1,
		  "route r: user: needs at least one source" },
		{ "route r {\n\tpath = \"/a/{id}\"\n\tuser = { \"header:X-User\", \"path:uid\" }\n\tread_flag = \"f\"\n}\n"
		  UPSTREAMS,
		  3, "route r: user: source 'path:uid': the path '/a/{id}' has no {uid}" },
		{ "route r {\n\tuser = { \"ip:remote\" }\n\tpath = \"/a\"\n}\n" UPSTREAMS, 2,
		  "route r: user: unknown source 'ip:remote': expected path:NAME, header:NAME" },
		{ SOURCE_ROUTE("/a", "email"), 3, "unknown source 'email'" },
		{ SOURCE_ROUTE("/a", "header:X User"), 3,
		  "source 'header:X User': 'X User' is not a valid header name" },
		{ SOURCE_ROUTE("/a", "cookie:"), 3, "'' is not a valid cookie name" },
		{ SOURCE_ROUTE("/a", "query:a=b"), 3, "is not a valid query parameter name" },
		{ SOURCE_ROUTE("/a", "jwt:my claim"), 3, "is not a valid claim name" },
		{ SOURCE_ROUTE("/{id}", "path:i-d"), 3, "is not a valid path parameter name" },
		{ SOURCE_ROUTE("/a", "body:user..id"), 3,
		  "source 'body:user..id': 'user..id' is not a valid field name" },
		{ SOURCE_ROUTE("/a", "body:.id"), 3, "is not a valid field name" },
		{ SOURCE_ROUTE("/a", "body:id."), 3, "is not a valid field name" },
		{ ROUTE_R "\nroute r {\n}\n" UPSTREAMS, 7, "found duplicate title 'r'" },
		{ "route \"bad name\" {\n}\n" UPSTREAMS, 1,
		  "route bad name: a route name may contain only letters" },
	};
	EXPECT_ERRORS(*state, cases);
}

static struct proxy_config *load_path(const struct conf_files *f, const char *path)
{
	char text[1024];
	snprintf(text, sizeof(text), PATH_ROUTE, path);
	return load_text(f, text);
}

static void expect_path_rejected(const struct conf_files *f, const char *path, const char *fragment)
{
	char text[1024];
	snprintf(text, sizeof(text), PATH_ROUTE, path);
	expect_error(f, text, 2, fragment);
}

static void test_path_templates(void **state)
{
	const struct conf_files *f = *state;
	/* As route.c reads them: "/" is one empty literal, "/" '*' no segment. */
	struct proxy_config *cfg = load_path(f, "/");
	assert_string_equal(cfg->routes[0].path, "/");
	assert_int_equal(cfg->routes[0].nsegments, 1);
	assert_segment(&cfg->routes[0], 0, "", NULL);
	assert_false(cfg->routes[0].prefix);
	config_unref(cfg);

	cfg = load_path(f, "/*");
	assert_int_equal(cfg->routes[0].nsegments, 0);
	assert_true(cfg->routes[0].prefix);
	config_unref(cfg);

	cfg = load_path(f, "/api/{org}/users/{id}/*");
	const struct route *r = &cfg->routes[0];
	assert_string_equal(r->path, "/api/{org}/users/{id}/*");
	assert_true(r->prefix);
	assert_int_equal(r->nsegments, 4);
	assert_segment(r, 0, "api", NULL);
	assert_segment(r, 1, NULL, "org");
	assert_segment(r, 2, "users", NULL);
	assert_segment(r, 3, NULL, "id");
	config_unref(cfg);

	cfg = load_path(f, "/v1/caf%C3%A9/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h_8}");
	r = &cfg->routes[0];
	assert_false(r->prefix);
	assert_int_equal(r->nsegments, 10);
	assert_segment(r, 1, "caf%C3%A9", NULL);
	assert_segment(r, 9, NULL, "h_8");
	config_unref(cfg);

	expect_path_rejected(f, "api/users", "path: 'api/users' must start with '/'");
	expect_path_rejected(f, "", "must start with '/'");
	expect_path_rejected(f, "/api/", "'/api/' has an empty segment");
	expect_path_rejected(f, "//api", "has an empty segment");
	expect_path_rejected(f, "//*", "has an empty segment");
	expect_path_rejected(f, "/api//*", "has an empty segment");
	expect_path_rejected(f, "/api/*/x", "segment '*': '*' may only be the last segment");
	expect_path_rejected(f, "/api/x*", "segment 'x*': '*' may only be the last segment");
	expect_path_rejected(f, "/api/{id}/{id}", "names {id} twice");
	expect_path_rejected(f, "/api/{}", "segment '{}': a {parameter} is named with letters, digits and '_'");
	expect_path_rejected(f, "/api/{id-x}", "a {parameter} is named with letters");
	expect_path_rejected(f, "/api/{id}x", "a {parameter} is named with letters");
	expect_path_rejected(f, "/api/x{id}", "segment 'x{id}': a {parameter} must be a whole segment");
	expect_path_rejected(f, "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", "has more than 8 parameters");
	expect_path_rejected(f, "/a b", "segment 'a b': has a character not allowed in a path");
	expect_path_rejected(f, "/a?b=1", "has a character not allowed in a path");
}

/* A route's line is the line it opens on, wherever its options are. */
static void test_route_lines(void **state)
{
	const struct conf_files *f = *state;
	struct proxy_config *cfg = load_text(f, "workers = 1\n\n" ROUTE_R "\nroute s {\n\n\n\tpath = \"/s\"\n"
						"\tuser = { \"header:X\" }\n\tread_flag = \"f\"\n}\n" UPSTREAMS);
	assert_int_equal(cfg->nroutes, 2);
	assert_int_equal(cfg->routes[0].line, 3);
	assert_int_equal(cfg->routes[1].line, 9);
	config_unref(cfg);
}

static void test_first_error_only(void **state)
{
	expect_error(*state, "workers = 5000\nlog_level = \"loud\"\n" UPSTREAMS, 1,
		     "workers: must be in 0..1024");
}

static void test_file_errors(void **state)
{
	const struct conf_files *f = *state;
	char path[sizeof(f->dir) + 16];
	snprintf(path, sizeof(path), "%s/missing.conf", f->dir);
	expect_path_error(path, "(no file)", 0, "cannot open: No such file or directory");
	snprintf(path, sizeof(path), "%s/sub", f->dir);
	assert_int_equal(mkdir(path, 0700), 0);
	expect_path_error(path, "(a directory)", 0, "not a regular file");
	assert_int_equal(rmdir(path), 0);
}

static void test_refcount(void **state)
{
	struct proxy_config *cfg = load_text(*state, ROUTE_R UPSTREAMS);
	assert_ptr_equal(config_ref(cfg), cfg);
	assert_ptr_equal(config_ref(cfg), cfg);
	assert_int_equal(atomic_load(&cfg->refs), 3);
	config_unref(cfg);
	config_unref(cfg);
	assert_int_equal(atomic_load(&cfg->refs), 1);
	assert_string_equal(cfg->routes[0].name, "r"); /* still alive: ASan would object */
	config_unref(cfg);                              /* freed: a leak would fail under ASan */
	config_unref(NULL);
}

static void test_upstream_kind_name(void **state)
{
	(void)state;
	assert_string_equal(upstream_kind_name(UPSTREAM_LEGACY), "legacy");
	assert_string_equal(upstream_kind_name(UPSTREAM_SERVICE), "service");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shipped_config),	 cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_every_option),	 cmocka_unit_test(test_syntax_errors),
		cmocka_unit_test(test_unknown_options), cmocka_unit_test(test_lines_after_comments),	 cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_addresses),	 cmocka_unit_test(test_upstream_sections),
		cmocka_unit_test(test_choices),		 cmocka_unit_test(test_redis),
		cmocka_unit_test(test_forcing),		 cmocka_unit_test(test_route_rules),
		cmocka_unit_test(test_path_templates),	 cmocka_unit_test(test_route_lines),
		cmocka_unit_test(test_first_error_only), cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_refcount),	 cmocka_unit_test(test_upstream_kind_name),
	};
	return cmocka_run_group_tests(tests, group_setup, conf_files_teardown);
}
