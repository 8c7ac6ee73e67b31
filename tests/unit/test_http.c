/*
 * Unit tests for proxy/http.c: the header index of a parsed head (inline
 * for a few headers, an array for more, freed again by a reset), the
 * hop-by-hop marking and the writing of headers. Messages are parsed
 * from heap copies of exactly their length, so that ASan reports any
 * read past the end.
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

/* Parses the head in text, a request or a response, into p->head
 * (p->data is its copy). Returns the parser's error, HPE_PAUSED once the
 * head is complete. */
static enum http_errno parse_as(struct parsed *p, const char *text, enum http_parser_type type)
{
	free(p->data);
	p->len = strlen(text);
	p->data = malloc(p->len);
	assert_non_null(p->data);
	memcpy(p->data, text, p->len);
	http_parser_init(&p->parser, type);
	p->parser.data = &p->target;
	http_head_reset(&p->head);
	p->target = (struct http_parse_target){ &p->head, p->data, NULL, false };
	http_parser_execute(&p->parser, type == HTTP_REQUEST ? http_request_settings() : http_response_settings(),
			    p->data, p->len);
	return HTTP_PARSER_ERRNO(&p->parser);
}

static enum http_errno parse(struct parsed *p, const char *text)
{
	return parse_as(p, text, HTTP_REQUEST);
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
	size_t len;
	const char *v = HTTP_HEADER_VALUE(&p.head, p.data, "HOST", &len);
	assert_true(v != NULL && len == 1 && *v == 'h');
	assert_null(HTTP_HEADER_VALUE(&p.head, p.data, "Hos", &len));
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

/* A header value continued on a folded line would be forwarded with the
 * CRLF inside it, ending the head early: refused, in both directions. */
static void test_obs_fold(void **state)
{
	(void)state;
	struct parsed p = { 0 };
	assert_int_not_equal(parse(&p, "GET /x HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\nX-After: 1\r\n\r\n"),
			     HPE_PAUSED);
	assert_true(p.head.folded);
	assert_int_not_equal(parse_as(&p, "HTTP/1.1 200 OK\r\nX-Fold: a\r\n\tb\r\nContent-Length: 0\r\n\r\n",
				      HTTP_RESPONSE),
			     HPE_PAUSED);
	assert_true(p.head.folded);
	assert_int_equal(parse(&p, "GET /x HTTP/1.1\r\nHost: x\r\nX-Plain: a b\r\n\r\n"), HPE_PAUSED);
	assert_false(p.head.folded);
	assert_string_equal(value_of(&p, "X-Plain"), "a b");
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

/* The headers http_append_headers writes for p once the hop-by-hop ones
 * (and extra_strip) are marked, as a string (a static buffer). */
static const char *forwarded(struct parsed *p, const char *extra_strip)
{
	static char out[1024];
	struct buf b;
	buf_init(&b);
	http_mark_hop_by_hop(&p->head, p->data, extra_strip);
	http_append_headers(&b, &p->head, p->data);
	snprintf(out, sizeof(out), "%s", b.data ? b.data : "");
	buf_free(&b);
	return out;
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
				   "keep-alive: timeout=5\r\n"
				   "te: trailers\r\n"
				   "tRaIlEr: X-Sum\r\n"
				   "UPGRADE: h2c\r\n"
				   "proxy-authorization: Basic x\r\n"
				   "Proxy-: not a Proxy-* name\r\n"
				   "X-Named: 2\r\n"
				   "X-Force: secret\r\n"
				   "Te-Not: 3\r\n"
				   "Tea: 4\r\n"
				   "Uplink: 5\r\n"
				   "Keep-Alive-Not: 6\r\n"
				   "Accept: */*\r\n"
				   "\r\n"),
			 HPE_PAUSED);
	http_mark_hop_by_hop(&p.head, p.data, "x-force");
	marked(&p, got, sizeof(got));
	assert_string_equal(got, "X-Early,Connection,keep-alive,te,tRaIlEr,UPGRADE,proxy-authorization,X-Named,X-Force,");
	assert_string_equal(forwarded(&p, "x-force"), "Host: h\r\nProxy-: not a Proxy-* name\r\nTe-Not: 3\r\nTea: 4\r\n"
						      "Uplink: 5\r\nKeep-Alive-Not: 6\r\nAccept: */*\r\n");
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

/*
 * Headers are written out as "Name: value\r\n" whatever their spacing
 * was; lines already in that form are copied as they stand, several at
 * once, which must give the same bytes. Dropped headers split a run.
 */
static void test_append_headers(void **state)
{
	(void)state;
	struct parsed p = { 0 };
	assert_int_equal(parse(&p, "GET / HTTP/1.1\r\n"
				   "Host: h\r\n"
				   "X-A:b\r\n"
				   "X-C:  d \r\n"
				   "Connection: close\r\n"
				   "X-E: f\r\n"
				   "X-Empty:\r\n"
				   "X-Sp: \r\n"
				   "X-T: v \t\r\n"
				   "Proxy-A: 1\r\n"
				   "X-F: g\r\n"
				   "X-G: h\r\n"
				   "\r\n"),
			 HPE_PAUSED);
	assert_string_equal(forwarded(&p, NULL), "Host: h\r\nX-A: b\r\nX-C: d \r\nX-E: f\r\nX-Empty: \r\nX-Sp: \r\n"
						 "X-T: v \t\r\nX-F: g\r\nX-G: h\r\n");
	/* Bare LF line ends: no line is in the written form. */
	assert_int_equal(parse(&p, "GET / HTTP/1.1\nHost: h\nX-A: b\nX-E: f\n\n"), HPE_PAUSED);
	assert_string_equal(forwarded(&p, NULL), "Host: h\r\nX-A: b\r\nX-E: f\r\n");
	/* One at a time, as the request side writes them. */
	struct buf out;
	buf_init(&out);
	for (size_t i = 0; i < p.head.nheaders; i++)
		http_append_header(&out, &p.head, p.data, i);
	assert_string_equal(out.data, "Host: h\r\nX-A: b\r\nX-E: f\r\n");
	buf_free(&out);
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
		cmocka_unit_test(test_append_headers),
		cmocka_unit_test(test_obs_fold),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
