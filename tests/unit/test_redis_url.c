/* Unit tests for common/redis_url.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"

static void test_full_url(void **state)
{
	(void)state;
	struct redis_url u;
	char err[128];
	assert_int_equal(redis_url_parse("redis://ops:p%40ss%3Aw@redis.internal:6380/3", &u, err, sizeof(err)), 0);
	assert_string_equal(u.host, "redis.internal");
	assert_int_equal(u.port, 6380);
	assert_string_equal(u.user, "ops");
	assert_string_equal(u.password, "p@ss:w");
	assert_int_equal(u.db, 3);
	char shown[128];
	redis_url_describe(&u, shown, sizeof(shown));
	assert_null(strstr(shown, "p@ss"));
	assert_string_equal(shown, "redis://ops:***@redis.internal:6380/3");
	redis_url_free(&u);
}

static void test_defaults_and_password_only(void **state)
{
	(void)state;
	struct redis_url u;
	char err[128];
	assert_int_equal(redis_url_parse("redis://localhost", &u, err, sizeof(err)), 0);
	assert_int_equal(u.port, 6379);
	assert_int_equal(u.db, 0);
	assert_null(u.password);
	redis_url_free(&u);
	assert_int_equal(redis_url_parse("redis://:secret@127.0.0.1:7000/", &u, err, sizeof(err)), 0);
	assert_null(u.user);
	assert_string_equal(u.password, "secret");
	assert_int_equal(u.db, 0);
	redis_url_free(&u);
}

static void test_unix_socket(void **state)
{
	(void)state;
	struct redis_url u;
	char err[128];
	assert_int_equal(redis_url_parse("unix:///run/redis/redis.sock?db=2&password=x%20y", &u, err, sizeof(err)), 0);
	assert_string_equal(u.socket_path, "/run/redis/redis.sock");
	assert_int_equal(u.db, 2);
	assert_string_equal(u.password, "x y");
	assert_null(u.host);
	redis_url_free(&u);
}

static void expect_error(const char *url, const char *fragment)
{
	struct redis_url u;
	char err[128] = "";
	assert_int_equal(redis_url_parse(url, &u, err, sizeof(err)), -1);
	if (strstr(err, fragment) == NULL)
		fail_msg("error for %s was '%s', expected it to mention '%s'", url, err, fragment);
}

static void test_errors(void **state)
{
	(void)state;
	expect_error("http://localhost", "must start with redis://");
	expect_error("rediss://localhost", "TLS");
	expect_error("redis://localhost:0", "invalid port");
	expect_error("redis://localhost:99999", "invalid port");
	expect_error("redis://localhost:ab", "invalid port");
	expect_error("redis://localhost/x", "invalid db");
	expect_error("redis://:6379", "no host");
	expect_error("redis://user@localhost", "credentials");
	expect_error("redis://:p%zz@localhost", "percent-encoding");
	expect_error("unix://relative.sock", "absolute path");
	expect_error("unix:///s.sock?db=x", "invalid db");
	expect_error("unix:///s.sock?tls=1", "unknown query parameter 'tls'");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_url),
		cmocka_unit_test(test_defaults_and_password_only),
		cmocka_unit_test(test_unix_socket),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
