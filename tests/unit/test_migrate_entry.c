/*
 * Unit tests for the user ids of migrate stream entries (migrator/
 * worker.c): which ids are malformed and why, and finding the user field
 * among an entry's fields as hiredis returns them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "migrator/migrator.h"

struct id_case {
	const char *id;
	size_t len;
	const char *why; /* NULL: valid */
};

#define ID(s) s, sizeof(s) - 1

static void test_user_ids(void **state)
{
	(void)state;
	char longest[USER_ID_MAX + 1];
	memset(longest, 'x', sizeof(longest));
	const struct id_case cases[] = {
		{ ID("u1"), NULL },
		{ ID("alice@example.com"), NULL },
		{ ID("65a1b2c3d4e5f60718293a4b"), NULL },
		{ ID("élodie/東京 x"), NULL },
		{ longest, USER_ID_MAX, NULL },
		{ longest, USER_ID_MAX + 1, "longer than 256 bytes" },
		{ ID(""), "empty" },
		{ ID("bad\xff"), "not UTF-8" },
		{ ID("\xc0\xaf"), "not UTF-8" },          /* overlong '/' */
		{ ID("\xed\xa0\x80"), "not UTF-8" },      /* a surrogate */
		{ ID("a\tb"), "has a control character" },
		{ ID("a\nb"), "has a control character" },
		{ ID("a\x7f"), "has a control character" },
		{ ID("a\xc2\x85"), "has a control character" }, /* U+0085, C1 */
		{ ID("a\xc2\xa0"), NULL },                       /* U+00A0 is not */
		{ "a\0b", 3, "has a control character" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *why = NULL;
		int rc = user_id_check(cases[i].id, cases[i].len, &why);
		if (cases[i].why == NULL && rc != 0)
			fail_msg("case %zu: refused: %s", i, why);
		if (cases[i].why != NULL && (rc != -1 || why == NULL || strcmp(why, cases[i].why) != 0))
			fail_msg("case %zu: want '%s', got rc %d '%s'", i, cases[i].why, rc, why ? why : "");
	}
}

static redisReply str_reply(const char *s)
{
	return (redisReply){ .type = REDIS_REPLY_STRING, .str = (char *)s, .len = strlen(s) };
}

static void test_entry_user(void **state)
{
	(void)state;
	redisReply k1 = str_reply("reason"), v1 = str_reply("first-seen");
	redisReply k2 = str_reply("user"), v2 = str_reply("u42");
	redisReply k3 = str_reply("at"), v3 = str_reply("1700000000000");
	redisReply *elems[] = { &k1, &v1, &k2, &v2, &k3, &v3 };
	redisReply fields = { .type = REDIS_REPLY_ARRAY, .elements = 6, .element = elems };
	const char *user, *why = NULL;
	size_t len;
	assert_int_equal(entry_user(&fields, &user, &len, &why), 0);
	assert_int_equal(len, 3);
	assert_memory_equal(user, "u42", 3);

	/* Not UTF-8: refused, the value still handed back for the log. */
	v2 = (redisReply){ .type = REDIS_REPLY_STRING, .str = (char *)"u\xff", .len = 2 };
	assert_int_equal(entry_user(&fields, &user, &len, &why), -1);
	assert_string_equal(why, "not UTF-8");
	assert_int_equal(len, 2);

	/* A field named like user but longer, a value that is no string, no
	 * fields at all: no user field. */
	k2 = str_reply("users");
	assert_int_equal(entry_user(&fields, &user, &len, &why), -1);
	assert_string_equal(why, "no user field");
	assert_null(user);
	k2 = str_reply("user");
	v2 = (redisReply){ .type = REDIS_REPLY_NIL };
	assert_int_equal(entry_user(&fields, &user, &len, &why), -1);
	assert_string_equal(why, "no user field");
	redisReply nil = { .type = REDIS_REPLY_NIL };
	assert_int_equal(entry_user(&nil, &user, &len, &why), -1);
	assert_int_equal(entry_user(NULL, &user, &len, &why), -1);
	assert_string_equal(why, "no user field");

	/* An odd trailing name has no value. */
	redisReply *odd[] = { &k1, &v1, &k2 };
	redisReply short_fields = { .type = REDIS_REPLY_ARRAY, .elements = 3, .element = odd };
	assert_int_equal(entry_user(&short_fields, &user, &len, &why), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_user_ids),
		cmocka_unit_test(test_entry_user),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
