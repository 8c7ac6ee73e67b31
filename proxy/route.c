/*
 * route.c - which route a request takes, and whose request it is.
 *
 * Both run for every request, on byte ranges into the connection's buffer
 * (struct http_view: nothing is NUL-terminated). Matching a route and
 * reading a user id from the path, a header, a cookie or the query string
 * allocate nothing; only a JWT or a JSON body is decoded on the heap,
 * because json_parse allocates its tokens.
 *
 * A template is held as its segments: the '/'-separated parts after the
 * leading '/', without the final "*" of a prefix route. "/api/users/{id}"
 * is api, users, {id}; with prefix set, the same segments stand for
 * "/api/users/{id}/" and then "*". The template "/" is one empty literal,
 * so it matches the path "/" only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy.h"

static const struct {
	const char *name;
	unsigned bit;
} http_methods[] = {
	{ "GET", METHOD_GET },	       { "HEAD", METHOD_HEAD },     { "POST", METHOD_POST },
	{ "PUT", METHOD_PUT },	       { "PATCH", METHOD_PATCH },   { "DELETE", METHOD_DELETE },
	{ "OPTIONS", METHOD_OPTIONS },
};

/* The METHOD_* bit of the method token name[0..len): exact and
 * case-sensitive (RFC 9110), METHOD_OTHER for anything else. */
unsigned http_method_bit(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(http_methods) / sizeof(http_methods[0]); i++)
		if (strlen(http_methods[i].name) == len && memcmp(http_methods[i].name, name, len) == 0)
			return http_methods[i].bit;
	return METHOD_OTHER;
}

/*
 * Matches the path against r's template, segment by segment, recording
 * the {param} spans in m. Literals compare byte for byte with the raw
 * path; a param takes any non-empty segment. A trailing '/' leaves an
 * empty last segment. A prefix route needs at least one segment beyond
 * its template, any other route exactly as many.
 */
static bool template_match(const struct route *r, const char *path, size_t len, struct route_match *m)
{
	if (len == 0 || path[0] != '/')
		return false;
	m->nparams = 0;
	/* pos is where the next segment starts; len + 1 once the path is used up. */
	size_t pos = 1;
	for (size_t i = 0; i < r->nsegments; i++) {
		if (pos > len)
			return false;
		const char *slash = memchr(path + pos, '/', len - pos);
		size_t seg_len = slash ? (size_t)(slash - (path + pos)) : len - pos;
		const struct path_segment *seg = &r->segments[i];
		if (seg->param) {
			if (seg_len == 0 || m->nparams == ROUTE_MAX_PARAMS)
				return false;
			m->params[m->nparams].name = seg->param;
			m->params[m->nparams].value = path + pos;
			m->params[m->nparams].value_len = seg_len;
			m->nparams++;
		} else if (strlen(seg->literal) != seg_len || memcmp(seg->literal, path + pos, seg_len) != 0) {
			return false;
		}
		pos += seg_len + 1;
	}
	return r->prefix ? pos <= len : pos > len;
}

/*
 * Finds the first route of cfg that allows req's method and whose
 * template matches req's path. Returns true and fills m (its params point
 * into req->path), or false when no route matches.
 */
bool route_match(const struct proxy_config *cfg, const struct http_view *req, struct route_match *m)
{
	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct route *r = &cfg->routes[i];
		if ((r->methods & req->method) && template_match(r, req->path, req->path_len, m)) {
			m->route = r;
			return true;
		}
	}
	m->route = NULL;
	m->nparams = 0;
	return false;
}

/* True when a user id may come from the body, which must then be read
 * before routing. */
bool route_needs_body(const struct route *r)
{
	for (size_t i = 0; i < r->nsources; i++)
		if (r->sources[i].kind == USER_FROM_BODY)
			return true;
	return false;
}

/* ---- user ids ---------------------------------------------------------- */

/*
 * Where a source's value is assembled: the caller's out, of which at most
 * ROUTE_USER_ID_MAX bytes are used (one more is left for the NUL). A
 * longer value is not stored, only noted.
 */
struct id_buf {
	char *data;
	size_t len;
	bool too_long;
};

static void id_append(struct id_buf *b, const char *s, size_t n)
{
	if (n > ROUTE_USER_ID_MAX - b->len) {
		b->too_long = true;
		return;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
}

static const char *const source_kind_names[] = {
	[USER_FROM_PATH] = "path",  [USER_FROM_HEADER] = "header", [USER_FROM_COOKIE] = "cookie",
	[USER_FROM_QUERY] = "query", [USER_FROM_JWT] = "jwt",	    [USER_FROM_BODY] = "body",
};

/* Writes "user id from KIND:NAME <what>" to why. */
static void bad_value(const struct user_source *src, const char *what, char *why, size_t whylen)
{
	snprintf(why, whylen, "user id from %s:%s %s", source_kind_names[src->kind], src->name, what);
}

/*
 * Turns what a source found into the answer: nothing (an empty value),
 * a user id (NUL-terminated in b->data, its length in *len), or BAD when
 * it is too long or fails flag_user_id_check.
 */
static int id_finish(const struct user_source *src, struct id_buf *b, size_t *len, char *why, size_t whylen)
{
	char err[FLAG_ERR_MAX];
	if (b->too_long) {
		snprintf(err, sizeof(err), "is longer than %d bytes", ROUTE_USER_ID_MAX);
		bad_value(src, err, why, whylen);
		return USER_ID_BAD;
	}
	if (b->len == 0)
		return USER_ID_NONE;
	if (flag_user_id_check(b->data, b->len, err, sizeof(err)) < 0) {
		/* "user id contains ..." reads "user id from header:X contains ..." */
		size_t skip = strncmp(err, "user id ", 8) == 0 ? 8 : 0;
		bad_value(src, err + skip, why, whylen);
		return USER_ID_BAD;
	}
	b->data[b->len] = '\0';
	*len = b->len;
	return USER_ID_FOUND;
}

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

/* Narrows s[0..*len) to leave out leading and trailing spaces and tabs. */
static const char *trim(const char *s, size_t *len)
{
	while (*len > 0 && is_ows(s[0]))
		s++, (*len)--;
	while (*len > 0 && is_ows(s[*len - 1]))
		(*len)--;
	return s;
}

/* The next header called name (any case) at or after *pos, advancing
 * *pos past it; NULL when there is none. */
static const struct http_header_view *next_header(const struct http_view *req, const char *name, size_t *pos)
{
	size_t n = strlen(name);
	while (*pos < req->nheaders) {
		const struct http_header_view *h = &req->headers[(*pos)++];
		if (h->name_len == n && strncasecmp(h->name, name, n) == 0)
			return h;
	}
	return NULL;
}

/*
 * Decodes the byte at s[*i] of s[0..len), advancing *i past it: %XX is
 * that byte, '+' a space when plus_space (query strings) and itself
 * otherwise. Returns the byte (0..255), or -1 for a malformed escape.
 */
static int percent_next(const char *s, size_t len, size_t *i, bool plus_space)
{
	char c = s[(*i)++];
	if (c == '+' && plus_space)
		return ' ';
	if (c != '%')
		return (unsigned char)c;
	if (len - *i < 2)
		return -1;
	int hi = hex_digit(s[*i]), lo = hex_digit(s[*i + 1]);
	if (hi < 0 || lo < 0)
		return -1;
	*i += 2;
	return hi << 4 | lo;
}

/* Percent-decodes s[0..len) into b. Returns -1 for a malformed escape. */
static int percent_decode(const char *s, size_t len, bool plus_space, struct id_buf *b)
{
	for (size_t i = 0; i < len;) {
		int c = percent_next(s, len, &i, plus_space);
		if (c < 0)
			return -1;
		char byte = (char)c;
		id_append(b, &byte, 1);
	}
	return 0;
}

/* True when the query key s[0..len) decodes to exactly name. A key with a
 * malformed escape matches nothing. */
static bool query_key_is(const char *s, size_t len, const char *name)
{
	size_t i = 0;
	for (; i < len && *name; name++) {
		if (percent_next(s, len, &i, true) != (unsigned char)*name)
			return false;
	}
	return i == len && *name == '\0';
}

/*
 * The sources. Each looks for its value and returns USER_ID_NONE when
 * there is none, USER_ID_FOUND with the raw value in b (still to be
 * checked by id_finish; it may be empty or too long), or USER_ID_BAD
 * with the reason in why.
 */
typedef int (*source_fn)(const struct route_match *m, const struct http_view *req,
			 const struct user_source *src, struct id_buf *b, char *why, size_t whylen);

static int from_path(const struct route_match *m, const struct http_view *req,
		     const struct user_source *src, struct id_buf *b, char *why, size_t whylen)
{
	(void)req;
	for (size_t i = 0; i < m->nparams; i++) {
		if (strcmp(m->params[i].name, src->name) != 0)
			continue;
		if (percent_decode(m->params[i].value, m->params[i].value_len, false, b) < 0) {
			bad_value(src, "has invalid percent-encoding", why, whylen);
			return USER_ID_BAD;
		}
		return USER_ID_FOUND;
	}
	return USER_ID_NONE;
}

/* The first header of that name, trimmed. */
static int from_header(const struct route_match *m, const struct http_view *req,
		       const struct user_source *src, struct id_buf *b, char *why, size_t whylen)
{
	(void)m, (void)why, (void)whylen;
	size_t pos = 0;
	const struct http_header_view *h = next_header(req, src->name, &pos);
	if (!h)
		return USER_ID_NONE;
	size_t len = h->value_len;
	const char *value = trim(h->value, &len);
	id_append(b, value, len);
	return USER_ID_FOUND;
}

/* The first cookie of that exact name in any Cookie header ("a=1; b=2"),
 * without the double quotes a value may be written in. */
static int from_cookie(const struct route_match *m, const struct http_view *req,
		       const struct user_source *src, struct id_buf *b, char *why, size_t whylen)
{
	(void)m, (void)why, (void)whylen;
	size_t pos = 0, name_len = strlen(src->name);
	const struct http_header_view *h;
	while ((h = next_header(req, "Cookie", &pos)) != NULL) {
		const char *p = h->value, *end = h->value + h->value_len;
		while (p < end) {
			const char *semi = memchr(p, ';', (size_t)(end - p));
			const char *pair_end = semi ? semi : end;
			const char *eq = memchr(p, '=', (size_t)(pair_end - p));
			if (eq) {
				size_t klen = (size_t)(eq - p), vlen = (size_t)(pair_end - eq - 1);
				const char *key = trim(p, &klen), *value = trim(eq + 1, &vlen);
				if (klen == name_len && memcmp(key, src->name, klen) == 0) {
					if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"')
						value++, vlen -= 2;
					id_append(b, value, vlen);
					return USER_ID_FOUND;
				}
			}
			p = semi ? semi + 1 : end;
		}
	}
	return USER_ID_NONE;
}

/* The first parameter of that name in "a=1&b=2", keys and values
 * percent-decoded with '+' for a space. */
static int from_query(const struct route_match *m, const struct http_view *req,
		      const struct user_source *src, struct id_buf *b, char *why, size_t whylen)
{
	(void)m;
	if (!req->query)
		return USER_ID_NONE;
	const char *p = req->query, *end = req->query + req->query_len;
	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *pair_end = amp ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(pair_end - p));
		const char *key_end = eq ? eq : pair_end;
		if (query_key_is(p, (size_t)(key_end - p), src->name)) {
			const char *value = eq ? eq + 1 : pair_end;
			if (percent_decode(value, (size_t)(pair_end - value), true, b) < 0) {
				bad_value(src, "has invalid percent-encoding", why, whylen);
				return USER_ID_BAD;
			}
			return USER_ID_FOUND;
		}
		p = amp ? amp + 1 : end;
	}
	return USER_ID_NONE;
}

/* The value of key[0..keylen) in the object at obj, or -1 (also when obj
 * is not an object). Keys compare on their raw text, as json_key_is does:
 * a key written with escapes matches only the same escapes. */
static int json_member(const struct json_doc *doc, int obj, const char *key, size_t keylen)
{
	if (doc->tok[obj].type != JSON_OBJECT)
		return -1;
	int i = obj + 1;
	for (int k = 0; k < doc->tok[obj].size; k++) {
		const struct json_token *t = &doc->tok[i];
		if ((size_t)(t->end - t->start) == keylen && memcmp(doc->text + t->start, key, keylen) == 0)
			return i + 1;
		i = json_next(doc, i + 1);
	}
	return -1;
}

/* A number without fraction or exponent, of any size: json_parse has
 * checked the syntax, so only '-' and digits are left to look for. */
static bool json_is_integer(const struct json_doc *doc, int i)
{
	const struct json_token *t = &doc->tok[i];
	if (t->type != JSON_PRIMITIVE)
		return false;
	for (int k = t->start; k < t->end; k++) {
		char c = doc->text[k];
		if (!(c >= '0' && c <= '9') && !(c == '-' && k == t->start))
			return false;
	}
	return true;
}

/* The JSON value at i as a user id: a string (unescaped) or an integer
 * (its decimal text). Anything else is no user id; a string that cannot
 * be decoded (bad UTF-8, lone surrogate) is BAD. */
static int json_value_id(const struct json_doc *doc, int i, const struct user_source *src,
			 struct id_buf *b, char *why, size_t whylen)
{
	const struct json_token *t = &doc->tok[i];
	if (json_is_integer(doc, i)) {
		id_append(b, doc->text + t->start, (size_t)(t->end - t->start));
		return USER_ID_FOUND;
	}
	if (t->type != JSON_STRING)
		return USER_ID_NONE;
	char *s;
	size_t len;
	const char *bad;
	if (json_get_string(doc, i, &s, &len, &bad) < 0) {
		bad_value(src, bad, why, whylen);
		return USER_ID_BAD;
	}
	id_append(b, s, len);
	free(s);
	return USER_ID_FOUND;
}

static int base64url_digit(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

/* Decodes base64url s[0..len), with or without '=' padding, into out,
 * which has room for len * 3 / 4 bytes. Returns -1 if it is not base64url. */
static int base64url_decode(const char *s, size_t len, char *out, size_t *outlen)
{
	for (int pad = 0; pad < 2 && len > 0 && s[len - 1] == '='; pad++)
		len--;
	if (len % 4 == 1)
		return -1;
	uint32_t acc = 0;
	int bits = 0;
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		int d = base64url_digit(s[i]);
		if (d < 0)
			return -1;
		acc = (acc << 6 | (uint32_t)d) & 0xffffff;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (char)(acc >> bits);
		}
	}
	*outlen = n;
	return 0;
}

/*
 * A top-level claim of the JWT in the first Authorization: Bearer header.
 * The token is not verified - it only picks an upstream, which still
 * authenticates the request - so a token that is not three '.'-separated
 * parts with a base64url JSON object in the middle is just no user id.
 */
static int from_jwt(const struct route_match *m, const struct http_view *req,
		    const struct user_source *src, struct id_buf *b, char *why, size_t whylen)
{
	(void)m;
	size_t pos = 0;
	const struct http_header_view *h = next_header(req, "Authorization", &pos);
	if (!h)
		return USER_ID_NONE;
	size_t len = h->value_len;
	const char *token = trim(h->value, &len);
	if (len <= 7 || strncasecmp(token, "Bearer", 6) != 0 || !is_ows(token[6]))
		return USER_ID_NONE;
	len -= 7;
	token = trim(token + 7, &len);
	const char *dot1 = memchr(token, '.', len);
	const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
	if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
		return USER_ID_NONE;
	size_t b64_len = (size_t)(dot2 - dot1 - 1), json_len;
	char *json = xmalloc(b64_len * 3 / 4 + 1);
	char err[FLAG_ERR_MAX];
	struct json_doc doc;
	int rc = USER_ID_NONE;
	if (base64url_decode(dot1 + 1, b64_len, json, &json_len) == 0 &&
	    json_parse(&doc, json, json_len, err, sizeof(err)) == 0) {
		int v = json_member(&doc, 0, src->name, strlen(src->name));
		if (v >= 0)
			rc = json_value_id(&doc, v, src, b, why, whylen);
		json_doc_free(&doc);
	}
	free(json);
	return rc;
}

/* A field of the JSON body, dotted for nesting (user.id). An absent or
 * empty body has no field; a body that is not JSON is BAD. */
static int from_body(const struct route_match *m, const struct http_view *req,
		     const struct user_source *src, struct id_buf *b, char *why, size_t whylen)
{
	(void)m;
	if (!req->body || req->body_len == 0)
		return USER_ID_NONE;
	struct json_doc doc;
	char err[FLAG_ERR_MAX];
	if (json_parse(&doc, req->body, req->body_len, err, sizeof(err)) < 0) {
		snprintf(why, whylen, "request body is not JSON: %s", err);
		return USER_ID_BAD;
	}
	int v = 0;
	const char *part = src->name;
	for (;;) {
		const char *dot = strchr(part, '.');
		v = json_member(&doc, v, part, dot ? (size_t)(dot - part) : strlen(part));
		if (v < 0 || !dot)
			break;
		part = dot + 1;
	}
	int rc = v < 0 ? USER_ID_NONE : json_value_id(&doc, v, src, b, why, whylen);
	json_doc_free(&doc);
	return rc;
}

static const source_fn source_fns[] = {
	[USER_FROM_PATH] = from_path,	[USER_FROM_HEADER] = from_header, [USER_FROM_COOKIE] = from_cookie,
	[USER_FROM_QUERY] = from_query, [USER_FROM_JWT] = from_jwt,	  [USER_FROM_BODY] = from_body,
};

/*
 * The user id of a request matched to m->route: the route's sources are
 * tried in order and the first that yields a non-empty value wins.
 * Returns USER_ID_FOUND with the id NUL-terminated in out (room for
 * ROUTE_USER_ID_MAX + 1 bytes) and its length in *len; USER_ID_NONE when
 * no source has one; USER_ID_BAD with the reason in why when a value is
 * malformed or not a valid user id, which the proxy answers with 400.
 * Unless FOUND, out is "" and *len 0.
 */
int route_user_id(const struct route_match *m, const struct http_view *req, char *out, size_t *len,
		  char *why, size_t whylen)
{
	const struct route *r = m->route;
	int rc = USER_ID_NONE;
	for (size_t i = 0; i < r->nsources && rc == USER_ID_NONE; i++) {
		const struct user_source *src = &r->sources[i];
		struct id_buf b = { out, 0, false };
		rc = source_fns[src->kind](m, req, src, &b, why, whylen);
		if (rc == USER_ID_FOUND)
			rc = id_finish(src, &b, len, why, whylen);
	}
	if (rc != USER_ID_FOUND) {
		out[0] = '\0';
		*len = 0;
	}
	return rc;
}
