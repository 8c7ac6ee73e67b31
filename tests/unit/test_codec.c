/* Unit tests for flags/codec.c: strict decoding, exact round trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "flags/flags.h"

#define CANONICAL                                                                                    \
	"{\"name\":\"users-read\",\"enabled\":true,\"kill\":false,\"percent\":1250,\"salt\":\"s\\\"1\"," \
	"\"allow\":[\"u1\",\"\xc3\xa9l\xc3\xa8ve\"],\"deny\":[\"u2\"],\"cohorts\":[\"beta\",\"staff\"],"  \
	"\"description\":\"reads\\nof users\",\"owner\":\"team\"}"

static void test_round_trip_is_exact(void **state)
{
	(void)state;
	char err[FLAG_ERR_MAX];
	struct flag *f = flag_decode(CANONICAL, strlen(CANONICAL), err, sizeof(err));
	assert_non_null(f);
	assert_string_equal(f->name, "users-read");
	assert_true(f->enabled);
	assert_int_equal(f->percent, 1250);
	assert_string_equal(f->salt, "s\"1");
	assert_int_equal(f->allow.n, 2);
	assert_string_equal(f->description, "reads\nof users");
	struct buf out;
	buf_init(&out);
	flag_encode(f, &out);
	assert_string_equal(out.data, CANONICAL);
	struct flag *again = flag_decode(out.data, out.len, err, sizeof(err));
	assert_non_null(again);
	assert_true(flag_equal(f, again));
	struct flag *copy = flag_clone(f);
	assert_true(flag_equal(f, copy));
	flag_free(copy);
	flag_free(again);
	flag_free(f);
	buf_free(&out);
}

static void test_defaults(void **state)
{
	(void)state;
	char err[FLAG_ERR_MAX];
	const char *json = "{\"name\":\"x\"}";
	struct flag *f = flag_decode(json, strlen(json), err, sizeof(err));
	assert_non_null(f);
	struct flag *fresh = flag_new("x");
	assert_true(flag_equal(f, fresh));
	assert_false(f->enabled);
	assert_int_equal(f->percent, 0);
	assert_string_equal(f->salt, "x");
	flag_free(f);
	flag_free(fresh);
}

/* Decoding json must fail with an error containing fragment. */
static void expect_error(const char *json, const char *fragment)
{
	char err[FLAG_ERR_MAX] = "";
	struct flag *f = flag_decode(json, strlen(json), err, sizeof(err));
	if (f != NULL) {
		flag_free(f);
		fail_msg("accepted %s", json);
	}
	if (strstr(err, fragment) == NULL)
		fail_msg("error for %s was '%s', expected '%s'", json, err, fragment);
}

static void test_structure_errors(void **state)
{
	(void)state;
	expect_error("[]", "must be a JSON object");
	expect_error("{\"name\":\"x\"", "invalid JSON");
	expect_error("{\"name\":\"x\"} {}", "invalid JSON");
	expect_error("{}", "field 'name': is required");
	expect_error("{\"name\":\"x\",\"colour\":1}", "unknown field 'colour'");
	expect_error("{\"name\":\"x\",\"kill\":true,\"kill\":false}", "duplicate field 'kill'");
}

static void test_type_and_range_errors(void **state)
{
	(void)state;
	expect_error("{\"name\":\"x\",\"enabled\":\"yes\"}", "field 'enabled': must be true or false");
	expect_error("{\"name\":\"x\",\"kill\":1}", "field 'kill': must be true or false");
	expect_error("{\"name\":\"x\",\"percent\":10001}", "field 'percent': must be an integer in 0..10000");
	expect_error("{\"name\":\"x\",\"percent\":-1}", "field 'percent'");
	expect_error("{\"name\":\"x\",\"percent\":12.5}", "field 'percent'");
	expect_error("{\"name\":\"x\",\"percent\":\"10\"}", "field 'percent'");
	expect_error("{\"name\":1}", "field 'name': must be a string");
	expect_error("{\"name\":\"\"}", "field 'name': must be 1 to 64 bytes long");
	expect_error("{\"name\":\"a b\"}", "field 'name': may contain only");
	expect_error("{\"name\":\"x\",\"allow\":\"u1\"}", "field 'allow': must be an array of strings");
	expect_error("{\"name\":\"x\",\"allow\":[1]}", "field 'allow': must be a string");
	expect_error("{\"name\":\"x\",\"deny\":[\"u1\",\"u1\"]}", "field 'deny': duplicate entry 'u1'");
	expect_error("{\"name\":\"x\",\"allow\":[\"\"]}", "field 'allow': entry 0 user id must be 1 to 256 bytes");
	expect_error("{\"name\":\"x\",\"cohorts\":[\"no spaces\"]}", "field 'cohorts': entry 0 may contain only");
	expect_error("{\"name\":\"x\",\"owner\":\"\xff\"}", "field 'owner': is not valid UTF-8");
	expect_error("{\"name\":\"x\",\"salt\":\"\\u0000\"}", "field 'salt': contains a NUL character");
	expect_error("{\"name\":\"x\",\"description\":\"\\ud800\"}", "field 'description': has an unpaired surrogate");
}

static void test_length_limits(void **state)
{
	(void)state;
	char json[2048], long_text[1100];
	memset(long_text, 'a', sizeof(long_text) - 1);
	long_text[sizeof(long_text) - 1] = '\0';
	/* 64-byte name is fine, 65 is not. */
	snprintf(json, sizeof(json), "{\"name\":\"%.64s\"}", long_text);
	char err[FLAG_ERR_MAX];
	struct flag *f = flag_decode(json, strlen(json), err, sizeof(err));
	assert_non_null(f);
	flag_free(f);
	snprintf(json, sizeof(json), "{\"name\":\"%.65s\"}", long_text);
	expect_error(json, "field 'name': is longer than 64 bytes");
	snprintf(json, sizeof(json), "{\"name\":\"x\",\"allow\":[\"%.257s\"]}", long_text);
	expect_error(json, "field 'allow': is longer than 256 bytes");
	snprintf(json, sizeof(json), "{\"name\":\"x\",\"salt\":\"%.65s\"}", long_text);
	expect_error(json, "field 'salt': is longer than 64 bytes");
	snprintf(json, sizeof(json), "{\"name\":\"x\",\"description\":\"%.1025s\"}", long_text);
	expect_error(json, "field 'description': is longer than 1024 bytes");
}

static void test_list_limit(void **state)
{
	(void)state;
	struct buf json;
	buf_init(&json);
	buf_puts(&json, "{\"name\":\"x\",\"allow\":[");
	for (int i = 0; i <= FLAG_LIST_MAX; i++)
		buf_printf(&json, "%s\"u%d\"", i ? "," : "", i);
	buf_puts(&json, "]}");
	expect_error(json.data, "field 'allow': more than 10000 entries");
	buf_free(&json);
}

static void test_percent_parse(void **state)
{
	(void)state;
	struct {
		const char *text;
		int bp;
	} good[] = { { "12.5%", 1250 }, { "1250", 1250 }, { "0", 0 }, { "100%", 10000 }, { "10000", 10000 },
		     { "0.01%", 1 }, { "33.33%", 3333 }, { "7%", 700 } };
	char err[FLAG_ERR_MAX];
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		int bp = -1;
		assert_int_equal(flag_percent_parse(good[i].text, &bp, err, sizeof(err)), 0);
		assert_int_equal(bp, good[i].bp);
		char shown[16];
		flag_percent_format(bp, shown, sizeof(shown));
		int back = -1;
		assert_int_equal(flag_percent_parse(shown, &back, err, sizeof(err)), 0);
		assert_int_equal(back, bp);
	}
	const char *bad[] = { "101%", "10001", "12.555%", "abc", "-1", "12.5", "", "%", "1.%", ".5%", "5 %" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int bp;
		if (flag_percent_parse(bad[i], &bp, err, sizeof(err)) == 0)
			fail_msg("accepted percent '%s'", bad[i]);
		assert_non_null(strstr(err, "percent"));
	}
}

static void test_diff(void **state)
{
	(void)state;
	struct flag *a = flag_new("x"), *b = flag_new("x");
	struct buf d;
	buf_init(&d);
	flag_diff(a, b, &d);
	assert_string_equal(d.data, "no change");
	b->kill = true;
	b->percent = 2000;
	flag_idlist_add(&b->allow, "u1");
	flag_idlist_add(&a->deny, "u2");
	buf_reset(&d);
	buf_puts(&d, "prefix: ");
	flag_diff(a, b, &d);
	assert_string_equal(d.data, "prefix: kill false -> true, percent 0% -> 20%, allow +u1, deny -u2");
	flag_free(a);
	flag_free(b);
	buf_free(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_is_exact), cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_structure_errors),    cmocka_unit_test(test_type_and_range_errors),
		cmocka_unit_test(test_length_limits),       cmocka_unit_test(test_list_limit),
		cmocka_unit_test(test_percent_parse),       cmocka_unit_test(test_diff),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
