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

/*
 * Grows span s with [at, at+len), or starts it when empty. Returns -1
 * (which stops the parser) when the piece does not follow the span: the
 * parser hands a value continued on a folded line (obs-fold, RFC 9112
 * 5.2) as a second piece past the CRLF, and a span over both would
 * forward that CRLF inside the value, ending the head early and sending
 * the rest as a message of its own. Folding is obsolete; such a message
 * is refused (400 for a request, 502 for a response).
 */
static int span_extend(http_parser *p, struct span *s, const char *at, size_t len)
{
	size_t off = offset_of(p, at);
	if (s->len == 0)
		s->off = (uint32_t)off;
	else if (off != (size_t)s->off + s->len) {
		target_of(p)->head->folded = true;
		return -1;
	}
	s->len += (uint32_t)len;
	return 0;
}

int http_on_url(http_parser *p, const char *at, size_t len)
{
	return span_extend(p, &target_of(p)->head->url, at, len);
}

static int on_status(http_parser *p, const char *at, size_t len)
{
	return span_extend(p, &target_of(p)->head->status, at, len);
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
	return span_extend(p, &h->fields[h->nheaders - 1].name, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
	struct http_head *h = target_of(p)->head;
	h->in_value = true;
	return span_extend(p, &h->fields[h->nheaders - 1].value, at, len);
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
bool http_name_is(const struct http_head *h, const char *base, size_t i, const char *name, size_t len)
{
	const struct span *n = &h->fields[i].name;
	return n->len == len && ascii_case_eq(base + n->off, name, len);
}

/* Whether header i is called name (case-insensitive). */
bool http_head_is(const struct http_head *h, const char *base, size_t i, const char *name)
{
	return http_name_is(h, base, i, name, strlen(name));
}

/* The value of the first header called name[0..namelen), or NULL. */
const char *http_header_find(const struct http_head *h, const char *base, const char *name, size_t namelen,
			     size_t *len)
{
	for (size_t i = 0; i < h->nheaders; i++) {
		if (http_name_is(h, base, i, name, namelen)) {
			*len = h->fields[i].value.len;
			return base + h->fields[i].value.off;
		}
	}
	return NULL;
}

/* The value of the first header called name, or NULL. */
const char *http_header_value(const struct http_head *h, const char *base, const char *name, size_t *len)
{
	return http_header_find(h, base, name, strlen(name), len);
}

static void mark_hop(struct http_head *h, size_t i)
{
	h->hop_mask[i / 32] |= 1u << (i % 32);
}

bool http_is_hop(const struct http_head *h, size_t i)
{
	return h->hop_mask[i / 32] & (1u << (i % 32));
}

/*
 * Whether header i is one a proxy always drops: Keep-Alive, TE, Trailer,
 * Upgrade, Proxy-*. Connection is the caller's. By first letter, then
 * length: most headers are none of these and are told apart at once,
 * where trying each name in turn cost several comparisons per header.
 */
static bool always_hop(const struct http_head *h, const char *base, size_t i)
{
	const struct span *name = &h->fields[i].name;
	const char *n = base + name->off;
	if (name->len == 0)
		return false;
	switch (n[0] | 0x20) {
	case 'k':
		return name->len == 10 && ascii_case_eq(n, "Keep-Alive", 10);
	case 't':
		return (name->len == 2 && ascii_case_eq(n, "TE", 2)) ||
		       (name->len == 7 && ascii_case_eq(n, "Trailer", 7));
	case 'u':
		return name->len == 7 && ascii_case_eq(n, "Upgrade", 7);
	case 'p':
		return name->len > 6 && ascii_case_eq(n, "Proxy-", 6);
	}
	return false;
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
			if (http_name_is(h, base, i, list + start, k - start))
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
	size_t extra_len = extra_strip ? strlen(extra_strip) : 0;
	for (size_t i = 0; i < h->nheaders; i++) {
		if (HTTP_HEAD_IS(h, base, i, "Connection")) {
			conn[nconn++] = i;
			mark_hop(h, i);
		} else if (always_hop(h, base, i) || (extra_strip && http_name_is(h, base, i, extra_strip, extra_len))) {
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

/*
 * Where header i's line ends in base when its bytes there are exactly
 * what http_append_header writes, "Name: value\r\n", or 0 when they are
 * not (other spacing, a bare LF, an empty value). Such a line can be
 * copied as it stands. Reading base[end + 1] is safe: a CR the parser
 * accepted in a head is followed by its LF.
 */
static uint32_t line_end(const struct http_head *h, const char *base, size_t i)
{
	const struct http_field *f = &h->fields[i];
	uint32_t colon = f->name.off + f->name.len;
	if (f->value.off != colon + 2 || base[colon] != ':' || base[colon + 1] != ' ')
		return 0;
	uint32_t end = f->value.off + f->value.len;
	return base[end] == '\r' && base[end + 1] == '\n' ? end + 2 : 0;
}

/* Appends header i as "Name: value\r\n". */
void http_append_header(struct buf *out, const struct http_head *h, const char *base, size_t i)
{
	const struct http_field *f = &h->fields[i];
	uint32_t end = line_end(h, base, i);
	if (end != 0) {
		buf_append(out, base + f->name.off, end - f->name.off);
		return;
	}
	buf_append(out, base + f->name.off, f->name.len);
	buf_append(out, ": ", 2);
	buf_append(out, base + f->value.off, f->value.len);
	buf_append(out, "\r\n", 2);
}

/*
 * Appends every header not marked hop-by-hop. Adjacent lines already in
 * the form http_append_header writes go out in one copy: the output is
 * the same, and four appends per header were the largest part of
 * writing a response head (callgrind).
 */
void http_append_headers(struct buf *out, const struct http_head *h, const char *base)
{
	size_t i = 0;
	while (i < h->nheaders) {
		if (http_is_hop(h, i)) {
			i++;
			continue;
		}
		uint32_t start = h->fields[i].name.off, end = line_end(h, base, i);
		if (end == 0) {
			http_append_header(out, h, base, i++);
			continue;
		}
		/* The run goes on while the next line starts where this one
		 * ended and is forwarded and canonical too. */
		for (i++; i < h->nheaders && !http_is_hop(h, i) && h->fields[i].name.off == end; i++) {
			uint32_t next = line_end(h, base, i);
			if (next == 0)
				break;
			end = next;
		}
		buf_append(out, base + start, end - start);
	}
}
