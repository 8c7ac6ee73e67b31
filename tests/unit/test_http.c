/*
 * Unit tests for proxy/http.c: the header index of a parsed head (inline
 * for a few headers, an array for more, freed again by a reset) and the
 * hop-by-hop marking. Messages are parsed from heap copies of exactly
 * their length, so that ASan reports any read past the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/http.h"

struct parsed {
	http_parser parser;
	struct http_parse_target target;
	struct http_head head;
	char *data;
	size_t len;
};

/* Parses the request head in text into p->head (p->data is its copy).
 * Returns the parser's error, HPE_PAUSED once the head is complete. */
static enum http_errno parse(struct parsed *p, const char *text)
{
	free(p->data);
	p->len = strlen(text);
	p->data = malloc(p->len);
	assert_non_null(p->data);
	memcpy(p->data, text, p->len);
	http_parser_init(&p->parser, HTTP_REQUEST);
	p->parser.data = &p->target;
	http_head_reset(&p->head);
	p->target = (struct http_parse_target){ &p->head, p->data, NULL, false };
	http_parser_execute(&p->parser, http_request_settings(), p->data, p->len);
	return HTTP_PARSER_ERRNO(&p->parser);
}

static void parsed_free(struct parsed *p)
{
	http_head_free(&p->head);
	free(p->data);
}

/* A request head with n headers "X-H<i>: v<i>" after Host; caller frees. */
static char *many_headers(int n)
{
	struct buf b;
	buf_init(&b);
	buf_puts(&b, "GET / HTTP/1.1\r\nHost: h\r\n");
	for (int i = 0; i < n; i++)
		buf_printf(&b, "X-H%d: v%d\r\n", i, i);
	buf_puts(&b, "\r\n");
	return buf_detach(&b);
}

/* The value of header name, as a string (a static buffer), or NULL. */
static const char *value_of(const struct parsed *p, const char *name)
{
	static char out[64];
	size_t len;
	const char *v = http_header_value(&p->head, p->data, name, &len);
	if (v == NULL)
		return NULL;
	snprintf(out, sizeof(out), "%.*s", (int)len, v);
	return out;
}

static void test_inline_headers(void **state)
{
	(void)state;
	struct parsed p = { 0 };
	assert_int_equal(parse(&p, "GET /a HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"), HPE_PAUSED);
	assert_true(p.head.complete);
	assert_int_equal(p.head.nheaders, 2);
	assert_ptr_equal(p.head.fields, p.head.inline_fields);
	assert_string_equal(value_of(&p, "accept"), "*/*");
	parsed_free(&p);
}

/* Past HTTP_INLINE_HEADERS the index moves to an array; every header
 * stays where it was, and the next message is back inline. */
static void test_many_headers(void **state)
{
	(void)state;
	struct parsed p = { 0 };
	for (int n = HTTP_INLINE_HEADERS - 2; n <= HTTP_MAX_HEADERS - 1; n++) {
		char *text = many_headers(n);
		assert_int_equal(parse(&p, text), HPE_PAUSED);
		free(text);
		assert_int_equal(p.head.nheaders, (size_t)n + 1);
		if ((size_t)n + 1 > HTTP_INLINE_HEADERS)
			assert_ptr_not_equal(p.head.fields, p.head.inline_fields);
		else
			assert_ptr_equal(p.head.fields, p.head.inline_fields);
		assert_string_equal(value_of(&p, "host"), "h");
		for (int i = 0; i < n; i++) {
			char name[16], value[16];
			snprintf(name, sizeof(name), "x-h%d", i);
			snprintf(value, sizeof(value), "v%d", i);
			assert_string_equal(value_of(&p, name), value);
		}
	}
	assert_int_equal(parse(&p, "GET / HTTP/1.1\r\nHost: again\r\n\r\n"), HPE_PAUSED);
	assert_ptr_equal(p.head.fields, p.head.inline_fields);
	assert_string_equal(value_of(&p, "Host"), "again");
	assert_null(value_of(&p, "X-H0"));
	parsed_free(&p);
}

static void test_too_many_headers(void **state)
{
	(void)state;
	struct parsed p = { 0 };
	char *text = many_headers(HTTP_MAX_HEADERS);
	assert_int_not_equal(parse(&p, text), HPE_PAUSED);
	free(text);
	assert_true(p.head.too_many);
	assert_int_equal(p.head.nheaders, HTTP_MAX_HEADERS);
	parsed_free(&p);
}

/* Which headers http_mark_hop_by_hop marks, by name, as "name,name,". */
static void marked(const struct parsed *p, char *out, size_t outlen)
{
	out[0] = '\0';
	for (size_t i = 0; i < p->head.nheaders; i++) {
		if (!http_is_hop(&p->head, i))
			continue;
		const struct span *n = &p->head.fields[i].name;
		size_t used = strlen(out);
		snprintf(out + used, outlen - used, "%.*s,", (int)n->len, p->data + n->off);
	}
}

static void test_hop_by_hop(void **state)
{
	(void)state;
	struct parsed p = { 0 };
	char got[512];
	assert_int_equal(parse(&p, "GET / HTTP/1.1\r\n"
				   "Host: h\r\n"
				   "X-Early: 1\r\n"
				   "Connection: keep-alive, ,X-Named\t,x-early\r\n"
				   "Keep-Alive: timeout=5\r\n"
				   "TE: trailers\r\n"
				   "Trailer: X-Sum\r\n"
				   "Upgrade: h2c\r\n"
				   "Proxy-Authorization: Basic x\r\n"
				   "Proxy-: not a Proxy-* name\r\n"
				   "X-Named: 2\r\n"
				   "X-Force: secret\r\n"
				   "Te-Not: 3\r\n"
				   "Accept: */*\r\n"
				   "\r\n"),
			 HPE_PAUSED);
	http_mark_hop_by_hop(&p.head, p.data, "x-force");
	marked(&p, got, sizeof(got));
	assert_string_equal(got, "X-Early,Connection,Keep-Alive,TE,Trailer,Upgrade,Proxy-Authorization,X-Named,X-Force,");

	struct buf out;
	buf_init(&out);
	http_append_headers(&out, &p.head, p.data);
	assert_string_equal(out.data, "Host: h\r\nProxy-: not a Proxy-* name\r\nTe-Not: 3\r\nAccept: */*\r\n");
	buf_free(&out);
	parsed_free(&p);
}

/* A Connection header past the inline ones names headers on both sides
 * of the boundary; a second Connection header counts too. */
static void test_hop_by_hop_many(void **state)
{
	(void)state;
	struct parsed p = { 0 };
	struct buf b;
	buf_init(&b);
	buf_puts(&b, "GET / HTTP/1.1\r\n");
	for (int i = 0; i < 30; i++)
		buf_printf(&b, "X-H%d: v\r\n", i);
	buf_puts(&b, "Connection: X-H1, x-h20\r\nConnection: X-H29\r\n\r\n");
	char *text = buf_detach(&b);
	assert_int_equal(parse(&p, text), HPE_PAUSED);
	free(text);
	http_mark_hop_by_hop(&p.head, p.data, NULL);
	char got[512];
	marked(&p, got, sizeof(got));
	assert_string_equal(got, "X-H1,X-H20,X-H29,Connection,Connection,");
	parsed_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_inline_headers),
		cmocka_unit_test(test_many_headers),
		cmocka_unit_test(test_too_many_headers),
		cmocka_unit_test(test_hop_by_hop),
		cmocka_unit_test(test_hop_by_hop_many),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
