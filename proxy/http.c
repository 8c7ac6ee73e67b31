/*
 * http.c - parser callbacks that record the head of a message as spans
 * of the connection's buffer, and the header filtering shared by both
 * directions of the proxy.
 *
 * libhttp-parser (Debian's, 2.9) does the strict parsing: request line,
 * header syntax, chunked framing, and it refuses a message carrying both
 * Content-Length and Transfer-Encoding or two different Content-Lengths,
 * which is what request smuggling needs. A callback may be called more
 * than once for one field when the bytes arrive in pieces; since the
 * proxy appends every read to one contiguous buffer, the pieces are
 * adjacent and a span simply grows.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http.h"

/* Frees what h allocated (the header array, when it outgrew the inline
 * one). */
void http_head_free(struct http_head *h)
{
	if (h->fields != h->inline_fields)
		free(h->fields);
	h->fields = h->inline_fields;
}

/* Makes h ready for the next message. Only the scalars are cleared, not
 * the header entries: each is cleared when its header starts (this ran
 * for every message and cleared 1.6 KB each time). */
void http_head_reset(struct http_head *h)
{
	http_head_free(h);
	memset(h, 0, offsetof(struct http_head, fields));
}

static struct http_parse_target *target_of(http_parser *p)
{
	return p->data;
}

static uint32_t offset_of(http_parser *p, const char *at)
{
	return (uint32_t)(at - target_of(p)->base);
}

/* Grows span s with [at, at+len), or starts it when empty. */
static void span_extend(http_parser *p, struct span *s, const char *at, size_t len)
{
	if (s->len == 0)
		s->off = offset_of(p, at);
	s->len += (uint32_t)len;
}

int http_on_url(http_parser *p, const char *at, size_t len)
{
	span_extend(p, &target_of(p)->head->url, at, len);
	return 0;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
	span_extend(p, &target_of(p)->head->status, at, len);
	return 0;
}

/* Starts a new, empty header entry; the first past the inline ones
 * moves the entries to an array with room for all. Returns -1 when there
 * are too many. */
static int add_field(struct http_head *h)
{
	if (h->nheaders == HTTP_MAX_HEADERS) {
		h->too_many = true;
		return -1;
	}
	if (h->nheaders == HTTP_INLINE_HEADERS && h->fields == h->inline_fields) {
		h->fields = xmalloc(HTTP_MAX_HEADERS * sizeof(*h->fields));
		memcpy(h->fields, h->inline_fields, sizeof(h->inline_fields));
	}
	h->fields[h->nheaders++] = (struct http_field){ { 0, 0 }, { 0, 0 } };
	return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
	struct http_head *h = target_of(p)->head;
	if (h->in_value || h->nheaders == 0) {
		if (add_field(h) < 0)
			return 1; /* stops the parser: the caller answers 431 */
		h->in_value = false;
	}
	span_extend(p, &h->fields[h->nheaders - 1].name, at, len);
	return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
	struct http_head *h = target_of(p)->head;
	h->in_value = true;
	span_extend(p, &h->fields[h->nheaders - 1].value, at, len);
	return 0;
}

/* Pausing hands control back to the connection, which decides where the
 * message goes before any of its body is parsed. */
static int on_headers_complete(http_parser *p)
{
	struct http_parse_target *t = target_of(p);
	t->head->complete = true;
	http_parser_pause(p, 1);
	return t->skip_body ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
	struct http_parse_target *t = target_of(p);
	if (t->body != NULL)
		buf_append(t->body, at, len);
	return 0;
}

static int on_message_complete(http_parser *p)
{
	target_of(p)->head->message_done = true;
	http_parser_pause(p, 1); /* a pipelined next message waits its turn */
	return 0;
}

static const http_parser_settings request_settings = {
	.on_url = http_on_url,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

static const http_parser_settings response_settings = {
	.on_status = on_status,
	.on_body = on_body,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_message_complete = on_message_complete,
};

const http_parser_settings *http_request_settings(void)
{
	return &request_settings;
}

const http_parser_settings *http_response_settings(void)
{
	return &response_settings;
}

/*
 * Whether a[0..n) and b[0..n) are equal but for the case of ASCII
 * letters: what strncasecmp does with header names, which are ASCII
 * tokens without NULs. Names are short and most differ in their first
 * byte, where the loop ends; the library call cost several times as much
 * per comparison (callgrind).
 */
static bool ascii_case_eq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
		if (x != y && ((x | 0x20) != (y | 0x20) || (unsigned char)((x | 0x20) - 'a') > 'z' - 'a'))
			return false;
	}
	return true;
}

/* Whether header i is called name[0..len) (case-insensitive). */
static bool name_is(const struct http_head *h, const char *base, size_t i, const char *name, size_t len)
{
	const struct span *n = &h->fields[i].name;
	return n->len == len && ascii_case_eq(base + n->off, name, len);
}

/* Whether header i is called name (case-insensitive). */
bool http_head_is(const struct http_head *h, const char *base, size_t i, const char *name)
{
	return name_is(h, base, i, name, strlen(name));
}

/* The value of the first header called name, or NULL. */
const char *http_header_value(const struct http_head *h, const char *base, const char *name, size_t *len)
{
	for (size_t i = 0; i < h->nheaders; i++) {
		if (http_head_is(h, base, i, name)) {
			*len = h->fields[i].value.len;
			return base + h->fields[i].value.off;
		}
	}
	return NULL;
}

static void mark_hop(struct http_head *h, size_t i)
{
	h->hop_mask[i / 32] |= 1u << (i % 32);
}

bool http_is_hop(const struct http_head *h, size_t i)
{
	return h->hop_mask[i / 32] & (1u << (i % 32));
}

/* Whether header i is one a proxy always drops: Keep-Alive, TE, Trailer,
 * Upgrade, Proxy-*, or extra_strip (may be NULL). Connection is the
 * caller's. */
static bool always_hop(const struct http_head *h, const char *base, size_t i, const char *extra_strip)
{
	static const struct {
		const char *name;
		size_t len;
	} hop[] = { { "Keep-Alive", 10 }, { "TE", 2 }, { "Trailer", 7 }, { "Upgrade", 7 } };
	const struct span *name = &h->fields[i].name;
	if (name->len > 6 && ascii_case_eq(base + name->off, "Proxy-", 6))
		return true;
	/* The length first, here: most headers are none of these, and a call
	 * per name cost more than the comparisons (callgrind). */
	for (size_t k = 0; k < sizeof(hop) / sizeof(hop[0]); k++)
		if (hop[k].len == name->len && name_is(h, base, i, hop[k].name, hop[k].len))
			return true;
	return extra_strip && http_head_is(h, base, i, extra_strip);
}

/* Marks every header named by a comma-separated token of list[0..len)
 * (a Connection header's value). */
static void mark_listed(struct http_head *h, const char *base, const char *list, size_t len)
{
	size_t k = 0;
	while (k < len) {
		while (k < len && (list[k] == ' ' || list[k] == '\t' || list[k] == ','))
			k++;
		size_t start = k;
		while (k < len && list[k] != ',' && list[k] != ' ' && list[k] != '\t')
			k++;
		for (size_t i = 0; k > start && i < h->nheaders; i++)
			if (name_is(h, base, i, list + start, k - start))
				mark_hop(h, i);
	}
}

/*
 * Marks the headers a proxy must not forward (RFC 9110 7.6.1):
 * Connection and every header it names, Keep-Alive, TE, Trailer,
 * Upgrade and Proxy-*; plus extra_strip (the force header), if not NULL.
 * Transfer-Encoding is hop-by-hop too, but the proxy passes the body's
 * framing through unchanged, so it travels with the body.
 * One pass over the headers, then one per token of the Connection
 * headers (usually one token: "close" or "keep-alive"), rather than a
 * scan of every Connection header for every header.
 */
void http_mark_hop_by_hop(struct http_head *h, const char *base, const char *extra_strip)
{
	size_t conn[HTTP_MAX_HEADERS], nconn = 0;
	for (size_t i = 0; i < h->nheaders; i++) {
		if (name_is(h, base, i, "Connection", 10)) {
			conn[nconn++] = i;
			mark_hop(h, i);
		} else if (always_hop(h, base, i, extra_strip)) {
			mark_hop(h, i);
		}
	}
	for (size_t c = 0; c < nconn; c++) {
		const struct span *v = &h->fields[conn[c]].value;
		mark_listed(h, base, base + v->off, v->len);
	}
}

/* Fills out[0..nheaders) with views of the headers. */
void http_headers_view(const struct http_head *h, const char *base, struct http_header_view *out)
{
	for (size_t i = 0; i < h->nheaders; i++) {
		const struct http_field *f = &h->fields[i];
		out[i] = (struct http_header_view){ base + f->name.off, f->name.len, base + f->value.off, f->value.len };
	}
}

/* Appends header i as "Name: value\r\n". */
void http_append_header(struct buf *out, const struct http_head *h, const char *base, size_t i)
{
	const struct http_field *f = &h->fields[i];
	buf_append(out, base + f->name.off, f->name.len);
	buf_append(out, ": ", 2);
	buf_append(out, base + f->value.off, f->value.len);
	buf_append(out, "\r\n", 2);
}

/* Appends every header not marked hop-by-hop. */
void http_append_headers(struct buf *out, const struct http_head *h, const char *base)
{
	for (size_t i = 0; i < h->nheaders; i++)
		if (!http_is_hop(h, i))
			http_append_header(out, h, base, i);
}
