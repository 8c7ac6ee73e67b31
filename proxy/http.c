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
#include <string.h>
#include <strings.h>

#include "proxy/http.h"

void http_head_reset(struct http_head *h)
{
	memset(h, 0, sizeof(*h));
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

static int on_header_field(http_parser *p, const char *at, size_t len)
{
	struct http_head *h = target_of(p)->head;
	if (h->in_value || h->nheaders == 0) {
		if (h->nheaders == HTTP_MAX_HEADERS) {
			h->too_many = true;
			return 1; /* stops the parser: the caller answers 431 */
		}
		h->nheaders++;
		h->in_value = false;
	}
	span_extend(p, &h->names[h->nheaders - 1], at, len);
	return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
	struct http_head *h = target_of(p)->head;
	h->in_value = true;
	span_extend(p, &h->values[h->nheaders - 1], at, len);
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

/* Whether header i is called name (case-insensitive). */
bool http_head_is(const struct http_head *h, const char *base, size_t i, const char *name)
{
	size_t n = strlen(name);
	return h->names[i].len == n && strncasecmp(base + h->names[i].off, name, n) == 0;
}

/* The value of the first header called name, or NULL. */
const char *http_header_value(const struct http_head *h, const char *base, const char *name, size_t *len)
{
	for (size_t i = 0; i < h->nheaders; i++) {
		if (http_head_is(h, base, i, name)) {
			*len = h->values[i].len;
			return base + h->values[i].off;
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

/* Marks header i if its name is one of the comma-separated tokens in
 * list[0..len) (a Connection header's value). */
static bool named_in(const struct http_head *h, const char *base, size_t i, const char *list, size_t len)
{
	const struct span *name = &h->names[i];
	size_t k = 0;
	while (k < len) {
		while (k < len && (list[k] == ' ' || list[k] == '\t' || list[k] == ','))
			k++;
		size_t start = k;
		while (k < len && list[k] != ',' && list[k] != ' ' && list[k] != '\t')
			k++;
		if (k - start == name->len && strncasecmp(list + start, base + name->off, name->len) == 0)
			return true;
	}
	return false;
}

/*
 * Marks the headers a proxy must not forward (RFC 9110 7.6.1):
 * Connection and every header it names, Keep-Alive, TE, Trailer,
 * Upgrade and Proxy-*; plus extra_strip (the force header), if not NULL.
 * Transfer-Encoding is hop-by-hop too, but the proxy passes the body's
 * framing through unchanged, so it travels with the body.
 */
void http_mark_hop_by_hop(struct http_head *h, const char *base, const char *extra_strip)
{
	static const char *const hop[] = { "Connection", "Keep-Alive", "TE", "Trailer", "Upgrade" };
	for (size_t i = 0; i < h->nheaders; i++) {
		bool drop = h->names[i].len > 6 && strncasecmp(base + h->names[i].off, "Proxy-", 6) == 0;
		for (size_t k = 0; !drop && k < sizeof(hop) / sizeof(hop[0]); k++)
			drop = http_head_is(h, base, i, hop[k]);
		if (!drop && extra_strip)
			drop = http_head_is(h, base, i, extra_strip);
		for (size_t c = 0; !drop && c < h->nheaders; c++)
			drop = http_head_is(h, base, c, "Connection") &&
			       named_in(h, base, i, base + h->values[c].off, h->values[c].len);
		if (drop)
			mark_hop(h, i);
	}
}

/* Fills out[0..nheaders) with views of the headers. */
void http_headers_view(const struct http_head *h, const char *base, struct http_header_view *out)
{
	for (size_t i = 0; i < h->nheaders; i++) {
		out[i] = (struct http_header_view){ base + h->names[i].off, h->names[i].len,
						    base + h->values[i].off, h->values[i].len };
	}
}

/* Appends every header not marked hop-by-hop, as "Name: value\r\n". */
void http_append_headers(struct buf *out, const struct http_head *h, const char *base)
{
	for (size_t i = 0; i < h->nheaders; i++) {
		if (http_is_hop(h, i))
			continue;
		buf_append(out, base + h->names[i].off, h->names[i].len);
		buf_append(out, ": ", 2);
		buf_append(out, base + h->values[i].off, h->values[i].len);
		buf_append(out, "\r\n", 2);
	}
}
