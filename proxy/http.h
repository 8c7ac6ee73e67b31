/*
 * http.h - the proxy's HTTP/1.1 message heads: parsed by Debian's
 * libhttp-parser into byte ranges of the connection's own buffer (no
 * allocation per header), filtered of hop-by-hop headers, and written
 * out again for the other side.
 */
#ifndef CUTOVER_PROXY_HTTP_H
#define CUTOVER_PROXY_HTTP_H

#include <http_parser.h>

#include "common/common.h"
#include "proxy/proxy.h"

#define HTTP_MAX_HEADERS 100
/* Headers indexed inside struct http_head; a message with more gets an
 * array for HTTP_MAX_HEADERS, until the next message. Most have fewer
 * (an API client sends 3-8, a browser 10-20, nginx answers with 5-6),
 * and the index lives in every connection, idle ones included: 100
 * entries each way cost 1.6 KB per connection. */
#define HTTP_INLINE_HEADERS 16

/* A span of the connection's input buffer: offsets, because the buffer
 * may move when it grows. */
struct span {
	uint32_t off;
	uint32_t len;
};

struct http_field {
	struct span name;
	struct span value;
};

/* Not to be copied: fields may point into it. */
struct http_head {
	/* Cleared by http_head_reset, up to inline_fields: */
	struct span url;    /* requests */
	struct span status; /* responses: the reason phrase */
	size_t nheaders;
	bool in_value;     /* the last callback was a value */
	bool too_many;     /* more than HTTP_MAX_HEADERS */
	bool folded;       /* a header line continued on the next (refused) */
	bool complete;     /* the header block has ended */
	bool message_done; /* the whole message (head and body) has ended */
	uint32_t head_len; /* bytes of the head, terminator included */
	uint32_t hop_mask[(HTTP_MAX_HEADERS + 31) / 32]; /* headers not to forward */
	/* The headers, [0, nheaders): inline_fields, or an array of
	 * HTTP_MAX_HEADERS allocated when a message has more (owned). Each
	 * entry is cleared as its header starts. */
	struct http_field *fields;
	struct http_field inline_fields[HTTP_INLINE_HEADERS];
};

void http_head_reset(struct http_head *h);
void http_head_free(struct http_head *h);
const http_parser_settings *http_request_settings(void);
const http_parser_settings *http_response_settings(void);
int http_on_url(http_parser *p, const char *at, size_t len);

/* What the parser callbacks need from their connection. */
struct http_parse_target {
	struct http_head *head;
	const char *base; /* start of the buffer the parser reads */
	struct buf *body; /* collects the decoded body, or NULL */
	bool skip_body;   /* a response to HEAD */
};

bool http_name_is(const struct http_head *h, const char *base, size_t i, const char *name, size_t len);
bool http_head_is(const struct http_head *h, const char *base, size_t i, const char *name);
const char *http_header_find(const struct http_head *h, const char *base, const char *name, size_t namelen,
			     size_t *len);
const char *http_header_value(const struct http_head *h, const char *base, const char *name, size_t *len);
/* http_head_is and http_header_value for a string literal name: its
 * length is known when compiling, where a strlen per header compared
 * cost more than the comparison (callgrind). */
#define HTTP_HEAD_IS(h, base, i, name) http_name_is((h), (base), (i), "" name, sizeof(name) - 1)
#define HTTP_HEADER_VALUE(h, base, name, len) http_header_find((h), (base), "" name, sizeof(name) - 1, (len))
void http_mark_hop_by_hop(struct http_head *h, const char *base, const char *extra_strip);
bool http_is_hop(const struct http_head *h, size_t i);
void http_headers_view(const struct http_head *h, const char *base, struct http_header_view *out);
void http_append_header(struct buf *out, const struct http_head *h, const char *base, size_t i);
void http_append_headers(struct buf *out, const struct http_head *h, const char *base);

#endif
