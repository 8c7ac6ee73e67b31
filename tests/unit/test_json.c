/* Unit tests for common/json.c: strictness of the layer over jsmn. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"

static int parse(const char *text, struct json_doc *doc)
{
	char err[128];
	return json_parse(doc, text, strlen(text), err, sizeof(err));
}

static void rejects(const char *text)
{
	struct json_doc doc;
	if (parse(text, &doc) == 0) {
		json_doc_free(&doc);
		fail_msg("accepted %s", text);
	}
}

static void test_rejects_malformed(void **state)
{
	(void)state;
	rejects("");
	rejects("   ");
	rejects("{\"a\":tru}");
	rejects("{\"a\":nul}");
	rejects("{\"a\":01}");
	rejects("{\"a\":1.}");
	rejects("{\"a\":1e}");
	rejects("{\"a\":-}");
	rejects("{\"a\":1} x");
	rejects("{\"a\":1}{\"b\":2}");
	rejects("{\"a\":[1,2}");
	rejects("{\"a\":\"unterminated}");
	rejects("{\"a\":1 \"b\":2}");
	rejects("{\"a\" \"b\"}");
	rejects("{\"a\":1,}");
	rejects("[1,]");
	rejects("[,1]");
	rejects("{\"a\"}");
	rejects("{\"a\"::1}");
	rejects("{1:2}");
	rejects("[1 2]");
}

static void test_accepts_numbers_and_literals(void **state)
{
	(void)state;
	struct json_doc doc;
	assert_int_equal(parse(" { \"a\" : [ 0 , -1,2.5,1e9,-0.5E-3,true,false,null] , \"b\":{},\"c\":[]} \n", &doc), 0);
	assert_int_equal(doc.tok[0].type, JSON_OBJECT);
	assert_int_equal(doc.tok[2].type, JSON_ARRAY);
	assert_int_equal(doc.tok[2].size, 8);
	assert_int_equal(json_next(&doc, 2), 11);
	assert_int_equal(doc.ntok, 15);
	long long v;
	assert_int_equal(json_get_int(&doc, 4, &v), 0);
	assert_int_equal(v, -1);
	assert_int_equal(json_get_int(&doc, 5, &v), -1); /* 2.5 is not an integer */
	bool b;
	assert_int_equal(json_get_bool(&doc, 8, &b), 0);
	assert_true(b);
	assert_int_equal(json_get_bool(&doc, 10, &b), -1); /* null */
	json_doc_free(&doc);
}

static char *string_of(const char *text, const char **why)
{
	struct json_doc doc;
	assert_int_equal(parse(text, &doc), 0);
	char *out = NULL;
	size_t len;
	if (json_get_string(&doc, 0, &out, &len, why) < 0)
		out = NULL;
	json_doc_free(&doc);
	return out;
}

static void test_string_escapes(void **state)
{
	(void)state;
	const char *why;
	char *s = string_of("\"a\\\"b\\\\c\\/d\\n\\t\\u00e9\\ud83d\\ude00\"", &why);
	assert_non_null(s);
	assert_string_equal(s, "a\"b\\c/d\n\t\xc3\xa9\xf0\x9f\x98\x80");
	free(s);
}

static void test_string_errors(void **state)
{
	(void)state;
	const char *why = NULL;
	assert_null(string_of("\"\\ud83d\"", &why)); /* lone high surrogate */
	assert_string_equal(why, "has an unpaired surrogate escape");
	assert_null(string_of("\"\\ude00\"", &why));
	rejects("\"\\u12g4\"");
	rejects("\"\\x\"");
	assert_null(string_of("\"a\tb\"", &why));
	assert_string_equal(why, "contains a raw control character");
	assert_null(string_of("\"\xc3\x28\"", &why));
	assert_string_equal(why, "is not valid UTF-8");
	assert_null(string_of("\"\xed\xa0\x80\"", &why)); /* encoded surrogate */
	assert_null(string_of("\"\xc0\xaf\"", &why));     /* overlong '/' */
	assert_null(string_of("\"\xf4\x90\x80\x80\"", &why)); /* above U+10FFFF */
}

static void test_put_string_round_trip(void **state)
{
	(void)state;
	const char raw[] = "q\"uote\\ \x01 tab\t nl\n \xc3\xa9";
	struct buf b;
	buf_init(&b);
	json_put_string(&b, raw, sizeof(raw) - 1);
	assert_string_equal(b.data, "\"q\\\"uote\\\\ \\u0001 tab\\t nl\\n \xc3\xa9\"");
	const char *why;
	char *back = string_of(b.data, &why);
	assert_non_null(back);
	assert_string_equal(back, raw);
	free(back);
	buf_free(&b);
}

/* Bytes that are not UTF-8 still make valid JSON: U+FFFD each. */
static void test_put_string_invalid_utf8(void **state)
{
	(void)state;
	const char raw[] = "a\xff\xc3\xa9\xe2\x82" "b";
	struct buf b;
	buf_init(&b);
	json_put_string(&b, raw, sizeof(raw) - 1);
	assert_string_equal(b.data, "\"a\\ufffd\xc3\xa9\\ufffd\\ufffdb\"");
	const char *why;
	char *back = string_of(b.data, &why);
	assert_non_null(back);
	assert_string_equal(back, "a\xef\xbf\xbd\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd" "b");
	free(back);
	buf_free(&b);
}

static void test_utf8(void **state)
{
	(void)state;
	assert_true(utf8_valid("", 0));
	assert_true(utf8_valid("\xe2\x82\xac", 3));
	assert_false(utf8_valid("\xe2\x82", 2)); /* truncated */
	assert_false(utf8_valid("\x80", 1));
	assert_false(utf8_valid("\xe0\x80\x80", 3)); /* overlong */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rejects_malformed),
		cmocka_unit_test(test_accepts_numbers_and_literals),
		cmocka_unit_test(test_string_escapes),
		cmocka_unit_test(test_string_errors),
		cmocka_unit_test(test_put_string_round_trip),
		cmocka_unit_test(test_put_string_invalid_utf8),
		cmocka_unit_test(test_utf8),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
