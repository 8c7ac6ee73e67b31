/*
 * Unit tests for proxy/route.c: method bits, route matching and the user
 * id sources. Routes are written out by hand as config.c builds them, and
 * every span of a request is a heap copy of exactly its length (no NUL),
 * so that ASan reports any read past the end of a span.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/proxy.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define SEGMENTS(a) .segments = (a), .nsegments = N_ELEMS(a)
#define ALL_METHODS 0xffu

/* ---- requests ----------------------------------------------------------- */

#define TEST_MAX_HEADERS 8

struct test_req {
	struct http_view view;
	struct http_header_view headers[TEST_MAX_HEADERS];
	char *copies[2 * TEST_MAX_HEADERS + 3];
	size_t ncopies;
};

/* A heap copy of s[0..len) without a NUL (one byte for an empty span, so
 * that no span is NULL). */
static const char *span(struct test_req *t, const char *s, size_t len)
{
	assert_true(t->ncopies < N_ELEMS(t->copies));
	char *copy = malloc(len ? len : 1);
	assert_non_null(copy);
	memcpy(copy, len ? s : "X", len ? len : 1);
	t->copies[t->ncopies++] = copy;
	return copy;
}

/* A request for path[0..path_len) and, unless query is NULL, the query
 * string query[0..query_len). */
static void req_init_n(struct test_req *t, const char *method, const char *path, size_t path_len,
		       const char *query, size_t query_len)
{
	memset(t, 0, sizeof(*t));
	t->view.method = http_method_bit(method, strlen(method));
	t->view.path = span(t, path, path_len);
	t->view.path_len = path_len;
	if (query) {
		t->view.query = span(t, query, query_len);
		t->view.query_len = query_len;
	}
	t->view.headers = t->headers;
}

/* A request for target ("/path" or "/path?query"). */
static void req_init(struct test_req *t, const char *method, const char *target)
{
	const char *q = strchr(target, '?');
	req_init_n(t, method, target, q ? (size_t)(q - target) : strlen(target), q ? q + 1 : NULL,
		   q ? strlen(q + 1) : 0);
}

static struct test_req *req_header_n(struct test_req *t, const char *name, const char *value,
				     size_t value_len)
{
	assert_true(t->view.nheaders < TEST_MAX_HEADERS);
	struct http_header_view *h = &t->headers[t->view.nheaders++];
	h->name_len = strlen(name);
	h->name = span(t, name, h->name_len);
	h->value_len = value_len;
	h->value = span(t, value, value_len);
	return t;
}

static struct test_req *req_header(struct test_req *t, const char *name, const char *value)
{
	return req_header_n(t, name, value, strlen(value));
}

static struct test_req *req_body_n(struct test_req *t, const char *body, size_t len)
{
	t->view.body = span(t, body, len);
	t->view.body_len = len;
	return t;
}

static struct test_req *req_body(struct test_req *t, const char *body)
{
	return req_body_n(t, body, strlen(body));
}

static void req_free(struct test_req *t)
{
	for (size_t i = 0; i < t->ncopies; i++)
		free(t->copies[i]);
	t->ncopies = 0;
}

/* The request the expect_* helpers consume: get() starts it. */
static struct test_req the_req;

static struct test_req *get(const char *target)
{
	req_init(&the_req, "GET", target);
	return &the_req;
}

/* ---- routes ------------------------------------------------------------- */

static struct path_segment seg_u_id[] = { { "u", NULL }, { NULL, "id" } };

/* The route "/u/{id}" with sources as the config writes them, separated
 * by spaces: "header:X-User-Id cookie:uid". */
struct test_route {
	struct route route;
	struct user_source sources[8];
	char text[256];
};

static void route_with(struct test_route *tr, const char *sources)
{
	static const char *const kinds[] = {
		[USER_FROM_PATH] = "path",   [USER_FROM_HEADER] = "header", [USER_FROM_COOKIE] = "cookie",
		[USER_FROM_QUERY] = "query", [USER_FROM_JWT] = "jwt",       [USER_FROM_BODY] = "body",
	};
	memset(tr, 0, sizeof(*tr));
	tr->route = (struct route){ .name = "u", .methods = ALL_METHODS, .path = "/u/{id}", SEGMENTS(seg_u_id) };
	snprintf(tr->text, sizeof(tr->text), "%s", sources);
	tr->route.sources = tr->sources;
	char *save = NULL;
	for (char *item = strtok_r(tr->text, " ", &save); item; item = strtok_r(NULL, " ", &save)) {
		char *colon = strchr(item, ':');
		assert_non_null(colon);
		*colon = '\0';
		size_t kind = 0;
		while (kind < N_ELEMS(kinds) && strcmp(kinds[kind], item) != 0)
			kind++;
		assert_true(kind < N_ELEMS(kinds));
		assert_true(tr->route.nsources < N_ELEMS(tr->sources));
		tr->sources[tr->route.nsources++] = (struct user_source){ (enum user_source_kind)kind, colon + 1 };
	}
}

struct id_answer {
	int rc;
	char id[ROUTE_USER_ID_MAX + 1];
	size_t len;
	char why[FLAG_ERR_MAX];
};

/* Matches t (whose path must be /u/{id}) and asks for its user id, then
 * frees t. */
static void user_id_of(struct test_req *t, const char *sources, struct id_answer *a)
{
	struct test_route tr;
	route_with(&tr, sources);
	struct proxy_config cfg = { .routes = &tr.route, .nroutes = 1 };
	struct route_match m;
	assert_true(route_match(&cfg, &t->view, &m));
	memset(a, 0x55, sizeof(*a));
	a->why[0] = '\0';
	a->rc = route_user_id(&m, &t->view, a->id, &a->len, a->why, sizeof(a->why));
	req_free(t);
	if (a->rc != USER_ID_FOUND) {
		assert_string_equal(a->id, "");
		assert_int_equal(a->len, 0);
	}
}

static void expect_found(struct test_req *t, const char *sources, const char *id)
{
	struct id_answer a;
	user_id_of(t, sources, &a);
	if (a.rc != USER_ID_FOUND)
		fail_msg("%s: result %d (%s), expected '%s'", sources, a.rc, a.why, id);
	assert_string_equal(a.id, id);
	assert_int_equal(a.len, strlen(id));
}

static void expect_none(struct test_req *t, const char *sources)
{
	struct id_answer a;
	user_id_of(t, sources, &a);
	if (a.rc != USER_ID_NONE)
		fail_msg("%s: result %d ('%s', %s), expected none", sources, a.rc, a.rc > 0 ? a.id : "", a.why);
}

static void expect_bad(struct test_req *t, const char *sources, const char *fragment)
{
	struct id_answer a;
	user_id_of(t, sources, &a);
	if (a.rc != USER_ID_BAD)
		fail_msg("%s: result %d ('%s'), expected bad: %s", sources, a.rc, a.rc > 0 ? a.id : "", fragment);
	if (strstr(a.why, fragment) == NULL)
		fail_msg("%s: reason '%s', expected '%s'", sources, a.why, fragment);
}

/* ---- methods and matching ----------------------------------------------- */

static void test_method_bits(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		unsigned bit;
	} cases[] = {
		{ "GET", METHOD_GET },	       { "HEAD", METHOD_HEAD },	    { "POST", METHOD_POST },
		{ "PUT", METHOD_PUT },	       { "PATCH", METHOD_PATCH },   { "DELETE", METHOD_DELETE },
		{ "OPTIONS", METHOD_OPTIONS }, { "get", METHOD_OTHER },	    { "Get", METHOD_OTHER },
		{ "GE", METHOD_OTHER },	       { "GETS", METHOD_OTHER },    { "", METHOD_OTHER },
		{ "TRACE", METHOD_OTHER },     { "CONNECT", METHOD_OTHER }, { "PROPFIND", METHOD_OTHER },
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		/* A span, not a string: the bytes after it must not count. */
		char buf[16];
		size_t len = strlen(cases[i].name);
		snprintf(buf, sizeof(buf), "%sXYZ", cases[i].name);
		if (http_method_bit(buf, len) != cases[i].bit)
			fail_msg("method '%s' gave %#x", cases[i].name, http_method_bit(buf, len));
	}
	assert_int_equal(http_method_bit("GET", 2), METHOD_OTHER);
}

static struct path_segment seg_users_id[] = { { "api", NULL }, { "users", NULL }, { NULL, "id" } };
static struct path_segment seg_users[] = { { "api", NULL }, { "users", NULL } };
static struct path_segment seg_me[] = { { "api", NULL }, { "me", NULL } };
static struct path_segment seg_org_user[] = {
	{ "orgs", NULL }, { NULL, "org" }, { "users", NULL }, { NULL, "id" }, { "x", NULL },
};
static struct path_segment seg_root[] = { { "", NULL } };
static struct path_segment seg_api[] = { { "api", NULL } };
static struct path_segment seg_nine[] = {
	{ NULL, "a" }, { NULL, "b" }, { NULL, "c" }, { NULL, "d" }, { NULL, "e" },
	{ NULL, "f" }, { NULL, "g" }, { NULL, "h" }, { NULL, "i" },
};

/* The name of the route cfg gives method and target, or NULL. */
static const char *matched(const struct proxy_config *cfg, const char *method, const char *target)
{
	struct test_req t;
	req_init(&t, method, target);
	struct route_match m;
	bool ok = route_match(cfg, &t.view, &m);
	req_free(&t);
	if (!ok) {
		assert_null(m.route);
		return NULL;
	}
	return m.route->name;
}

static void expect_route(const struct proxy_config *cfg, const char *method, const char *target,
			 const char *name)
{
	const char *got = matched(cfg, method, target);
	if (name == NULL ? got != NULL : got == NULL || strcmp(got, name) != 0)
		fail_msg("%s %s went to %s, expected %s", method, target, got ? got : "(none)",
			 name ? name : "(none)");
}

static void test_match_exact_and_params(void **state)
{
	(void)state;
	struct route routes[] = {
		{ .name = "user", .methods = ALL_METHODS, SEGMENTS(seg_users_id) },
		{ .name = "org", .methods = ALL_METHODS, SEGMENTS(seg_org_user) },
	};
	struct proxy_config cfg = { .routes = routes, .nroutes = N_ELEMS(routes) };
	expect_route(&cfg, "GET", "/api/users/42", "user");
	expect_route(&cfg, "GET", "/api/users/%34%32", "user");
	expect_route(&cfg, "GET", "/api/users/42/", NULL); /* an empty last segment */
	expect_route(&cfg, "GET", "/api/users/", NULL);    /* {id} must not be empty */
	expect_route(&cfg, "GET", "/api/users", NULL);
	expect_route(&cfg, "GET", "/api/users/42/orders", NULL);
	expect_route(&cfg, "GET", "/api/Users/42", NULL);  /* literals are byte-exact */
	expect_route(&cfg, "GET", "/api/user/42", NULL);
	expect_route(&cfg, "GET", "/api/usersx/42", NULL);
	expect_route(&cfg, "GET", "/api/%75sers/42", NULL); /* ... on the raw path */
	expect_route(&cfg, "GET", "/api//42", NULL);
	expect_route(&cfg, "GET", "//api/users/42", NULL);
	expect_route(&cfg, "GET", "api/users/42", NULL);
	expect_route(&cfg, "GET", "", NULL);
	expect_route(&cfg, "GET", "/orgs/acme/users/42/x", "org");
	expect_route(&cfg, "GET", "/orgs/acme/users/42/y", NULL);

	struct test_req t;
	req_init(&t, "GET", "/orgs/ac%20me/users/42/x?id=9");
	struct route_match m;
	assert_true(route_match(&cfg, &t.view, &m));
	assert_ptr_equal(m.route, &routes[1]);
	assert_int_equal(m.nparams, 2);
	assert_string_equal(m.params[0].name, "org");
	assert_int_equal(m.params[0].value_len, 7);
	assert_memory_equal(m.params[0].value, "ac%20me", 7);
	assert_ptr_equal(m.params[0].value, t.view.path + 6); /* a span of the path */
	assert_string_equal(m.params[1].name, "id");
	assert_int_equal(m.params[1].value_len, 2);
	assert_memory_equal(m.params[1].value, "42", 2);
	req_free(&t);
}

static void test_match_prefix(void **state)
{
	(void)state;
	struct route routes[] = {
		{ .name = "sub", .methods = ALL_METHODS, .prefix = true, SEGMENTS(seg_users_id) },
	};
	struct proxy_config cfg = { .routes = routes, .nroutes = N_ELEMS(routes) };
	expect_route(&cfg, "GET", "/api/users/42/orders", "sub");
	expect_route(&cfg, "GET", "/api/users/42/orders/7/items", "sub");
	expect_route(&cfg, "GET", "/api/users/42/", "sub"); /* one more, empty, segment */
	expect_route(&cfg, "GET", "/api/users/42", NULL);   /* at least one more */
	expect_route(&cfg, "GET", "/api/users//orders", NULL);
	expect_route(&cfg, "GET", "/api/users", NULL);

	struct test_req t;
	req_init(&t, "GET", "/api/users/u%2F1/orders");
	struct route_match m;
	assert_true(route_match(&cfg, &t.view, &m));
	assert_int_equal(m.nparams, 1);
	assert_int_equal(m.params[0].value_len, 5);
	assert_memory_equal(m.params[0].value, "u%2F1", 5);
	req_free(&t);
}

static void test_match_root(void **state)
{
	(void)state;
	struct route root[] = { { .name = "root", .methods = ALL_METHODS, SEGMENTS(seg_root) } };
	struct proxy_config cfg = { .routes = root, .nroutes = 1 };
	expect_route(&cfg, "GET", "/", "root");
	expect_route(&cfg, "GET", "/?a=1", "root");
	expect_route(&cfg, "GET", "/x", NULL);
	expect_route(&cfg, "GET", "//", NULL);
	expect_route(&cfg, "GET", "", NULL);

	/* "/" then "*": everything, "/" included (its one empty segment). */
	struct route all[] = { { .name = "all", .methods = ALL_METHODS, .prefix = true } };
	cfg.routes = all;
	expect_route(&cfg, "GET", "/", "all");
	expect_route(&cfg, "GET", "/x/y", "all");
	expect_route(&cfg, "GET", "", NULL);
	expect_route(&cfg, "GET", "*", NULL);

	cfg.nroutes = 0;
	expect_route(&cfg, "GET", "/", NULL);
}

static void test_match_methods_and_order(void **state)
{
	(void)state;
	struct route routes[] = {
		{ .name = "read", .methods = METHODS_READ, SEGMENTS(seg_users_id) },
		{ .name = "write", .methods = METHOD_PUT | METHOD_DELETE, SEGMENTS(seg_users_id) },
		{ .name = "shadowed", .methods = METHOD_GET, SEGMENTS(seg_users_id) },
		{ .name = "me", .methods = METHOD_GET, SEGMENTS(seg_me) },
		{ .name = "create", .methods = METHOD_POST, SEGMENTS(seg_users) },
		{ .name = "api", .methods = ALL_METHODS, .prefix = true, SEGMENTS(seg_api) },
	};
	struct proxy_config cfg = { .routes = routes, .nroutes = N_ELEMS(routes) };
	expect_route(&cfg, "GET", "/api/users/1", "read");
	expect_route(&cfg, "HEAD", "/api/users/1", "read");
	expect_route(&cfg, "PUT", "/api/users/1", "write");
	expect_route(&cfg, "DELETE", "/api/users/1", "write");
	expect_route(&cfg, "PATCH", "/api/users/1", "api"); /* falls through to the catch-all */
	expect_route(&cfg, "get", "/api/users/1", "api");   /* METHOD_OTHER */
	expect_route(&cfg, "GET", "/api/me", "me");
	expect_route(&cfg, "HEAD", "/api/me", "api");
	expect_route(&cfg, "POST", "/api/users", "create");
	expect_route(&cfg, "GET", "/api/users", "api");
	expect_route(&cfg, "GET", "/api", NULL);
	expect_route(&cfg, "GET", "/other", NULL);

	/* The first match wins: with the catch-all first, it takes everything. */
	struct route reordered[] = { routes[5], routes[0] };
	cfg.routes = reordered;
	cfg.nroutes = 2;
	expect_route(&cfg, "GET", "/api/users/1", "api");
}

static void test_match_param_limit(void **state)
{
	(void)state;
	/* More {params} than a match holds: config.c refuses such a template;
	 * should one slip through, it matches nothing rather than overflow. */
	struct route routes[] = { { .name = "nine", .methods = ALL_METHODS, SEGMENTS(seg_nine) } };
	struct proxy_config cfg = { .routes = routes, .nroutes = 1 };
	expect_route(&cfg, "GET", "/1/2/3/4/5/6/7/8/9", NULL);
	routes[0].nsegments = ROUTE_MAX_PARAMS;
	expect_route(&cfg, "GET", "/1/2/3/4/5/6/7/8", "nine");
}

static void test_needs_body(void **state)
{
	(void)state;
	struct test_route tr;
	route_with(&tr, "path:id header:X-User-Id cookie:uid query:uid jwt:sub");
	assert_false(route_needs_body(&tr.route));
	route_with(&tr, "header:X-User-Id body:user.id");
	assert_true(route_needs_body(&tr.route));
	route_with(&tr, "body:email");
	assert_true(route_needs_body(&tr.route));
	route_with(&tr, "");
	assert_false(route_needs_body(&tr.route));
}

/* ---- the sources -------------------------------------------------------- */

static void test_path_source(void **state)
{
	(void)state;
	expect_found(get("/u/42"), "path:id", "42");
	expect_found(get("/u/a%2Fb"), "path:id", "a/b");
	expect_found(get("/u/%7e%7E"), "path:id", "~~");
	expect_found(get("/u/a+b"), "path:id", "a+b"); /* '+' is not a space in a path */
	expect_found(get("/u/a%20b"), "path:id", "a b");
	expect_found(get("/u/%C3%A9l%C3%A8ve"), "path:id", "\xc3\xa9l\xc3\xa8ve");
	expect_found(get("/u/\xc3\xa9"), "path:id", "\xc3\xa9");
	expect_found(get("/u/42?id=7"), "path:id", "42");
	expect_none(get("/u/42"), "path:other");
	expect_bad(get("/u/%zz"), "path:id", "user id from path:id has invalid percent-encoding");
	expect_bad(get("/u/%4"), "path:id", "user id from path:id has invalid percent-encoding");
	expect_bad(get("/u/abc%"), "path:id", "user id from path:id has invalid percent-encoding");
	expect_bad(get("/u/%4g1"), "path:id", "user id from path:id has invalid percent-encoding");
	expect_bad(get("/u/%00"), "path:id", "user id from path:id contains a control character");
	expect_bad(get("/u/a%0Ab"), "path:id", "user id from path:id contains a control character");
	expect_bad(get("/u/%7F"), "path:id", "user id from path:id contains a control character");
	expect_bad(get("/u/%FF"), "path:id", "user id from path:id is not valid UTF-8");
	expect_bad(get("/u/%C3"), "path:id", "user id from path:id is not valid UTF-8");
	expect_bad(get("/u/%C0%AF"), "path:id", "user id from path:id is not valid UTF-8");
}

static void test_header_source(void **state)
{
	(void)state;
	const char *src = "header:X-User-Id";
	expect_found(req_header(get("/u/x"), "X-User-Id", "42"), src, "42");
	expect_found(req_header(get("/u/x"), "x-user-id", "42"), src, "42");
	expect_found(req_header(get("/u/x"), "X-USER-ID", " \t42 \t"), src, "42");
	expect_found(req_header(get("/u/x"), "X-User-Id", "a b"), src, "a b");
	expect_found(req_header(get("/u/x"), "X-User-Id", "a%20b+c"), src, "a%20b+c"); /* not decoded */
	expect_found(req_header(req_header(req_header(get("/u/x"), "Host", "h"), "X-User-Id", "first"),
				"X-User-Id", "second"),
		     src, "first");
	expect_none(req_header(get("/u/x"), "X-User-Idx", "42"), src);
	expect_none(req_header(get("/u/x"), "X-User-I", "42"), src);
	expect_none(req_header(get("/u/x"), "X-User-Id", ""), src);
	expect_none(req_header(get("/u/x"), "X-User-Id", " \t "), src);
	expect_none(get("/u/x"), src);
	expect_bad(req_header(get("/u/x"), "X-User-Id", "a\x01z"), src,
		   "user id from header:X-User-Id contains a control character");
	expect_bad(req_header_n(get("/u/x"), "X-User-Id", "a\0z", 3), src,
		   "user id from header:X-User-Id contains a control character");
	expect_bad(req_header(get("/u/x"), "X-User-Id", "caf\xe9"), src,
		   "user id from header:X-User-Id is not valid UTF-8");
}

static void test_cookie_source(void **state)
{
	(void)state;
	const char *src = "cookie:uid";
	expect_found(req_header(get("/u/x"), "Cookie", "uid=u7"), src, "u7");
	expect_found(req_header(get("/u/x"), "Cookie", "a=1; uid=u7; b=2"), src, "u7");
	expect_found(req_header(get("/u/x"), "cookie", "a=1;uid=u7"), src, "u7");
	expect_found(req_header(get("/u/x"), "Cookie", " a=1 ;  uid = u7 ; "), src, "u7");
	expect_found(req_header(get("/u/x"), "Cookie", "uid=\"u 8\""), src, "u 8");
	expect_found(req_header(get("/u/x"), "Cookie", "uid=\"u8"), src, "\"u8");
	expect_found(req_header(get("/u/x"), "Cookie", "uid=a%20b"), src, "a%20b"); /* not decoded */
	expect_found(req_header(get("/u/x"), "Cookie", "uid=a=b"), src, "a=b");
	expect_found(req_header(get("/u/x"), "Cookie", "junk; uid=5"), src, "5");
	expect_found(req_header(get("/u/x"), "Cookie", "uid=1; uid=2"), src, "1");
	expect_found(req_header(req_header(get("/u/x"), "Cookie", "a=1; b=2"), "Cookie", "uid=9"), src, "9");
	expect_found(req_header(req_header(get("/u/x"), "Cookie", "uid=1"), "Cookie", "uid=2"), src, "1");
	expect_none(req_header(get("/u/x"), "Cookie", "UID=1; xuid=2; uidx=3; ui=4"), src);
	expect_none(req_header(get("/u/x"), "Cookie", "uid"), src);
	expect_none(req_header(get("/u/x"), "Cookie", "uid="), src);
	expect_none(req_header(get("/u/x"), "Cookie", "uid=\"\""), src);
	expect_none(req_header(get("/u/x"), "Cookie", ""), src);
	expect_none(req_header(get("/u/x"), "Set-Cookie", "uid=1"), src);
	expect_none(get("/u/x"), src);
	expect_bad(req_header(get("/u/x"), "Cookie", "uid=a\tb"), src,
		   "user id from cookie:uid contains a control character");
}

static void test_query_source(void **state)
{
	(void)state;
	const char *src = "query:uid";
	expect_found(get("/u/x?uid=42"), src, "42");
	expect_found(get("/u/x?a=1&uid=a+b&c"), src, "a b");
	expect_found(get("/u/x?uid=a%2Bb"), src, "a+b");
	expect_found(get("/u/x?uid=%C3%A9"), src, "\xc3\xa9");
	expect_found(get("/u/x?u%69d=7"), src, "7"); /* keys are decoded too */
	expect_found(get("/u/x?uid=1&uid=2"), src, "1");
	expect_found(get("/u/x?uid=a=b"), src, "a=b");
	expect_found(get("/u/x?&&uid=4&"), src, "4");
	expect_found(get("/u/x?%zz=1&uid=3"), src, "3"); /* only the value found is checked */
	expect_found(get("/u/x?uid=3&x=%zz"), src, "3");
	expect_none(get("/u/x?uidx=1&xuid=2&ui=3&UID=4"), src);
	expect_none(get("/u/x?uid"), src);
	expect_none(get("/u/x?uid="), src);
	expect_none(get("/u/x?uid=&uid=5"), src); /* the first one counts */
	expect_none(get("/u/x?"), src);
	expect_none(get("/u/x"), src);
	expect_bad(get("/u/x?uid=%zz"), src, "user id from query:uid has invalid percent-encoding");
	expect_bad(get("/u/x?uid=%4"), src, "user id from query:uid has invalid percent-encoding");
	expect_bad(get("/u/x?uid=%4&b=2"), src, "user id from query:uid has invalid percent-encoding");
	expect_bad(get("/u/x?uid=%01"), src, "user id from query:uid contains a control character");
	expect_bad(get("/u/x?uid=%E9"), src, "user id from query:uid is not valid UTF-8");
}

static void base64url(const char *s, size_t len, bool pad, char *out)
{
	static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	const unsigned char *u = (const unsigned char *)s;
	size_t n = 0;
	for (size_t i = 0; i < len; i += 3) {
		size_t chunk = len - i < 3 ? len - i : 3;
		unsigned long v = (unsigned long)u[i] << 16 | (chunk > 1 ? u[i + 1] : 0u) << 8 |
				  (chunk > 2 ? u[i + 2] : 0u);
		for (size_t k = 0; k < 4; k++) {
			if (k <= chunk)
				out[n++] = digits[(v >> (18 - 6 * k)) & 63];
			else if (pad)
				out[n++] = '=';
		}
	}
	out[n] = '\0';
}

/* "Bearer <header>.<payload>.sig" for a payload. */
static const char *bearer(const char *payload, bool pad)
{
	static char out[2048];
	char head[64], body[1800];
	const char *header = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	base64url(header, strlen(header), false, head);
	base64url(payload, strlen(payload), pad, body);
	snprintf(out, sizeof(out), "Bearer %s.%s.c2lnbmF0dXJl", head, body);
	return out;
}

static struct test_req *with_jwt(const char *payload)
{
	return req_header(get("/u/x"), "Authorization", bearer(payload, false));
}

static void test_jwt_source(void **state)
{
	(void)state;
	const char *src = "jwt:sub";
	expect_found(with_jwt("{\"sub\":\"u-1\",\"iat\":1}"), src, "u-1");
	expect_found(with_jwt("{\"iat\":1,\"sub\":12345}"), src, "12345");
	expect_found(with_jwt("{\"sub\":-7}"), src, "-7");
	expect_found(with_jwt("{\"sub\":123456789012345678901234567890}"), src, "123456789012345678901234567890");
	expect_found(with_jwt("{\"sub\":\"\\u00e9\\\"\"}"), src, "\xc3\xa9\"");
	expect_found(with_jwt("{\"a\":{\"sub\":\"nested\"},\"sub\":\"top\"}"), src, "top");
	expect_found(with_jwt(" { \"sub\" : \"spaced\" } "), src, "spaced");
	/* With and without padding, for payloads of every length mod 3. */
	const char *payloads[] = { "{\"sub\":\"a\"}", "{\"sub\":\"ab\"}", "{\"sub\":\"abc\"}" };
	for (size_t i = 0; i < N_ELEMS(payloads); i++) {
		const char *want[] = { "a", "ab", "abc" };
		expect_found(req_header(get("/u/x"), "Authorization", bearer(payloads[i], true)), src, want[i]);
		expect_found(with_jwt(payloads[i]), src, want[i]);
	}
	/* Dots do not nest claims: "a.b" is one claim. */
	expect_found(with_jwt("{\"a.b\":\"dotted\"}"), "jwt:a.b", "dotted");
	expect_none(with_jwt("{\"a\":{\"b\":\"x\"}}"), "jwt:a.b");

	char text[2100];
	const char *jwt = bearer("{\"sub\":\"s\"}", false) + 7;
	snprintf(text, sizeof(text), "bearer %s", jwt);
	expect_found(req_header(get("/u/x"), "authorization", text), src, "s");
	snprintf(text, sizeof(text), "  BEARER \t %s  ", jwt);
	expect_found(req_header(get("/u/x"), "Authorization", text), src, "s");

	expect_none(with_jwt("{\"sub\":1.5}"), src);
	expect_none(with_jwt("{\"sub\":1e3}"), src);
	expect_none(with_jwt("{\"sub\":true}"), src);
	expect_none(with_jwt("{\"sub\":null}"), src);
	expect_none(with_jwt("{\"sub\":{\"id\":\"x\"}}"), src);
	expect_none(with_jwt("{\"sub\":[\"x\"]}"), src);
	expect_none(with_jwt("{\"sub\":\"\"}"), src);
	expect_none(with_jwt("{\"other\":\"x\"}"), src);
	expect_none(with_jwt("[\"sub\",\"x\"]"), src);
	expect_none(with_jwt("\"sub\""), src);
	expect_none(with_jwt("{\"sub\":\"x\""), src);
	expect_none(with_jwt("{\"sub\":\"x\"} trailing"), src);
	expect_none(with_jwt(""), src);
	expect_none(get("/u/x"), src);

	/* Malformed tokens. */
	const char *bad_tokens[] = {
		"Basic dXNlcjpwYXNz",
		"Bearer",
		"Bearer ",
		"Bearerx eyJzdWIiOiJ4In0.eyJzdWIiOiJ4In0.s",
		"Bearer eyJzdWIiOiJ4In0",                    /* one part */
		"Bearer x.eyJzdWIiOiJ4In0",                  /* two parts */
		"Bearer x.eyJzdWIiOiJ4In0.s.t",              /* four parts */
		"Bearer x.eyJzdWIiOiJ4In0*.s",               /* not base64url */
		"Bearer x.eyJzdWIiOiJ4In0+.s",               /* base64, not base64url */
		"Bearer x.eyJzdWIiOiJ4In0ab.s",              /* a length of 4n + 1 */
		"Bearer x.eyJzdWIiOiJ4In0===.s",             /* too much padding */
		"Bearer x.eyJzdWIi=OiJ4In0.s",               /* padding inside */
		"Bearer x..s",                               /* an empty payload */
		"Bearer x.bm90IGpzb24.s",                    /* "not json" */
	};
	for (size_t i = 0; i < N_ELEMS(bad_tokens); i++)
		expect_none(req_header(get("/u/x"), "Authorization", bad_tokens[i]), src);
	/* The payload above is fine: a well-formed token gives its claim. */
	expect_found(req_header(get("/u/x"), "Authorization", "Bearer x.eyJzdWIiOiJ4In0.s"), src, "x");
	expect_found(req_header(get("/u/x"), "Authorization", "Bearer .eyJzdWIiOiJ4In0."), src, "x");

	expect_bad(with_jwt("{\"sub\":\"\\ud800\"}"), src, "user id from jwt:sub has an unpaired surrogate escape");
	expect_bad(with_jwt("{\"sub\":\"\xff\"}"), src, "user id from jwt:sub is not valid UTF-8");
	expect_bad(with_jwt("{\"sub\":\"a\\nb\"}"), src, "user id from jwt:sub contains a control character");
	expect_bad(with_jwt("{\"sub\":\"a\\u0000b\"}"), src, "user id from jwt:sub contains a control character");
}

static void test_body_source(void **state)
{
	(void)state;
	expect_found(req_body(get("/u/x"), "{\"email\":\"a@b.c\"}"), "body:email", "a@b.c");
	expect_found(req_body(get("/u/x"), "{\"user\":{\"id\":42}}"), "body:user.id", "42");
	expect_found(req_body(get("/u/x"), "{\"a\":{\"b\":{\"c\":\"deep\"}}}"), "body:a.b.c", "deep");
	expect_found(req_body(get("/u/x"), "{\"user\":{\"id\":\"x\"},\"id\":\"y\"}"), "body:id", "y");
	expect_found(req_body(get("/u/x"), "{\"n\":[1,{\"id\":2}],\"user\":{\"x\":{},\"id\":\"u\"}}"),
		     "body:user.id", "u");
	expect_found(req_body(get("/u/x"), "{\"id\":\"caf\\u00e9\"}"), "body:id", "caf\xc3\xa9");
	expect_found(req_body(get("/u/x"), "\n{ \"id\" : 7 }\n"), "body:id", "7");
	expect_none(req_body(get("/u/x"), "{\"user\":\"str\"}"), "body:user.id");
	expect_none(req_body(get("/u/x"), "{\"user\":{\"name\":\"n\"}}"), "body:user.id");
	expect_none(req_body(get("/u/x"), "{\"user\":[{\"id\":\"x\"}]}"), "body:user.id");
	expect_none(req_body(get("/u/x"), "{\"user.id\":\"x\"}"), "body:user.id");
	expect_none(req_body(get("/u/x"), "{\"id\":[\"a\"]}"), "body:id");
	expect_none(req_body(get("/u/x"), "{\"id\":null}"), "body:id");
	expect_none(req_body(get("/u/x"), "{\"id\":2.5}"), "body:id");
	expect_none(req_body(get("/u/x"), "{\"id\":\"\"}"), "body:id");
	expect_none(req_body(get("/u/x"), "{}"), "body:id");
	expect_none(req_body(get("/u/x"), "[1,2]"), "body:id");
	expect_none(req_body(get("/u/x"), "\"id\""), "body:id");
	expect_none(req_body(get("/u/x"), ""), "body:id");
	expect_none(get("/u/x"), "body:id");
	expect_bad(req_body(get("/u/x"), "not json"), "body:id", "request body is not JSON: ");
	expect_bad(req_body(get("/u/x"), "{\"id\":"), "body:id", "request body is not JSON: malformed JSON");
	expect_bad(req_body(get("/u/x"), "{\"id\":\"ab"), "body:id", "request body is not JSON: truncated JSON");
	expect_bad(req_body(get("/u/x"), "{\"id\":1} {}"), "body:id", "request body is not JSON: more than one");
	expect_bad(req_body(get("/u/x"), "{\"id\":tru}"), "body:id", "request body is not JSON: invalid literal");
	expect_bad(req_body(get("/u/x"), "{\"id\":\"\\ud800\"}"), "body:id",
		   "user id from body:id has an unpaired surrogate escape");
	expect_bad(req_body(get("/u/x"), "{\"id\":\"a\\tb\"}"), "body:id",
		   "user id from body:id contains a control character");
}

/* GET /u/x with whichever of these headers are not NULL. */
static struct test_req *with_headers(const char *user_id, const char *cookie, const char *authorization)
{
	struct test_req *t = get("/u/x");
	if (authorization)
		req_header(t, "Authorization", authorization);
	if (cookie)
		req_header(t, "Cookie", cookie);
	if (user_id)
		req_header(t, "X-User-Id", user_id);
	return t;
}

static void test_source_order(void **state)
{
	(void)state;
	const char *me = "header:X-User-Id cookie:uid jwt:sub";
	const char *auth = bearer("{\"sub\":\"from-jwt\"}", false);
	expect_found(with_headers("from-header", "uid=from-cookie", auth), me, "from-header");
	expect_found(with_headers(NULL, "uid=from-cookie", auth), me, "from-cookie");
	expect_found(with_headers("  ", "uid=from-cookie", auth), me, "from-cookie");
	expect_found(with_headers(NULL, "other=1", auth), me, "from-jwt");
	expect_found(with_headers(NULL, NULL, auth), me, "from-jwt");
	expect_found(with_headers("from-header", NULL, NULL), me, "from-header");
	expect_none(with_headers(NULL, "uid=", "Bearer nonsense"), me);
	expect_none(with_headers(NULL, NULL, NULL), me);
	/* A bad value stops the search: it is not skipped for a later source. */
	expect_bad(with_headers("a\x02", "uid=from-cookie", auth), me,
		   "user id from header:X-User-Id contains a control character");
	expect_bad(get("/u/%zz?uid=7"), "path:id query:uid", "from path:id");

	expect_found(get("/u/42?uid=7"), "query:uid path:id", "7");
	expect_found(get("/u/42?uid="), "query:uid path:id", "42");
	expect_found(get("/u/42"), "query:uid path:id", "42");
	expect_found(req_body(get("/u/42?x=1"), "{\"id\":\"b\"}"), "query:uid body:id path:id", "b");
	expect_found(req_body(get("/u/42?x=1"), "{}"), "query:uid body:id path:id", "42");
	expect_none(get("/u/42"), "");
}

static void fill(char *out, size_t n, char c)
{
	memset(out, c, n);
	out[n] = '\0';
}

static void test_id_length_limits(void **state)
{
	(void)state;
	char id[ROUTE_USER_ID_MAX + 2], text[3 * 1024];
	const char *too_long = "is longer than 256 bytes";

	fill(id, 256, 'a');
	snprintf(text, sizeof(text), "/u/%s", id);
	expect_found(get(text), "path:id", id);
	snprintf(text, sizeof(text), "/u/%sa", id);
	expect_bad(get(text), "path:id", "user id from path:id is longer than 256 bytes");

	/* 256 bytes once decoded: 128 two-byte characters. */
	size_t n = (size_t)snprintf(text, sizeof(text), "/u/");
	for (int i = 0; i < 128; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "%%C3%%A9");
	for (int i = 0; i < 128; i++)
		memcpy(id + 2 * i, "\xc3\xa9", 2);
	id[256] = '\0';
	expect_found(get(text), "path:id", id);
	snprintf(text + n, sizeof(text) - n, "z");
	expect_bad(get(text), "path:id", too_long);

	fill(id, 256, 'q');
	snprintf(text, sizeof(text), "/u/x?uid=%s", id);
	expect_found(get(text), "query:uid", id);
	snprintf(text, sizeof(text), "/u/x?uid=%s+", id);
	expect_bad(get(text), "query:uid", "user id from query:uid is longer than 256 bytes");

	fill(id, 256, 'h');
	expect_found(req_header(get("/u/x"), "X-User-Id", id), "header:X-User-Id", id);
	snprintf(text, sizeof(text), "  %s  ", id);
	expect_found(req_header(get("/u/x"), "X-User-Id", text), "header:X-User-Id", id);
	snprintf(text, sizeof(text), "%sh", id);
	expect_bad(req_header(get("/u/x"), "X-User-Id", text), "header:X-User-Id",
		   "user id from header:X-User-Id is longer than 256 bytes");

	fill(id, 256, 'c');
	snprintf(text, sizeof(text), "uid=\"%s\"", id);
	expect_found(req_header(get("/u/x"), "Cookie", text), "cookie:uid", id);
	snprintf(text, sizeof(text), "uid=%sc", id);
	expect_bad(req_header(get("/u/x"), "Cookie", text), "cookie:uid", "from cookie:uid is longer than 256");

	fill(id, 256, 'j');
	snprintf(text, sizeof(text), "{\"sub\":\"%s\"}", id);
	expect_found(with_jwt(text), "jwt:sub", id);
	snprintf(text, sizeof(text), "{\"sub\":\"%sj\"}", id);
	expect_bad(with_jwt(text), "jwt:sub", "user id from jwt:sub is longer than 256 bytes");

	fill(id, 256, '9');
	snprintf(text, sizeof(text), "{\"id\":%s}", id);
	expect_found(req_body(get("/u/x"), text), "body:id", id);
	snprintf(text, sizeof(text), "{\"id\":%s9}", id);
	expect_bad(req_body(get("/u/x"), text), "body:id", "user id from body:id is longer than 256 bytes");
}

/* ---- robustness ---------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t xorshift(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Up to max random bytes (NULs included), mostly ones that the parsers
 * care about. Returns the length; out[len] is a NUL. */
static size_t random_text(char *out, size_t max)
{
	static const char alphabet[] = "%%%/=&;.\"\\{}[]:,+ \t-_aAzZ09fF4uCc\xc3\xa9";
	size_t len = xorshift() % (max + 1);
	for (size_t i = 0; i < len; i++) {
		uint64_t r = xorshift();
		out[i] = r % 4 == 0 ? (char)(r >> 8) : alphabet[(r >> 8) % (sizeof(alphabet) - 1)];
	}
	out[len] = '\0';
	return len;
}

/* Up to max bytes of a plausible user id: letters, digits, marks, and an
 * encoded character for the decoders to work on. */
static size_t plausible_text(char *out, size_t max)
{
	static const char *const pieces[] = { "a", "Z", "7", "-", "_", ".", "~", " ", "%C3%A9" };
	size_t len = 0, want = xorshift() % (max + 1);
	while (len < want) {
		const char *piece = pieces[xorshift() % N_ELEMS(pieces)];
		size_t n = strlen(piece);
		if (len + n > max)
			break;
		memcpy(out + len, piece, n);
		len += n;
	}
	out[len] = '\0';
	return len;
}

/* before, a random value (plausible or noise, short or longer than a user
 * id may be), then after, in out (room for 400 bytes besides before and
 * after). One time in four, noise alone. Returns the length. */
static size_t random_field(char *out, const char *before, const char *after)
{
	if (xorshift() % 4 == 0)
		before = after = "";
	size_t n = strlen(before), max = xorshift() % 2 ? 20 : 400;
	memcpy(out, before, n);
	n += xorshift() % 2 ? plausible_text(out + n, max) : random_text(out + n, max);
	memcpy(out + n, after, strlen(after) + 1);
	return n + strlen(after);
}

static void test_random_requests(void **state)
{
	(void)state;
	static struct path_segment seg_f_id[] = { { "f", NULL }, { NULL, "id" } };
	const struct user_source all[] = {
		{ USER_FROM_PATH, "id" },    { USER_FROM_QUERY, "uid" }, { USER_FROM_HEADER, "X-User-Id" },
		{ USER_FROM_COOKIE, "uid" }, { USER_FROM_JWT, "sub" },   { USER_FROM_BODY, "user.id" },
	};
	struct user_source sources[N_ELEMS(all)];
	struct route routes[] = {
		{ .name = "exact", .methods = ALL_METHODS, SEGMENTS(seg_f_id), .sources = sources,
		  .nsources = N_ELEMS(sources) },
		{ .name = "prefix", .methods = ALL_METHODS, .prefix = true, SEGMENTS(seg_f_id),
		  .sources = sources, .nsources = N_ELEMS(sources) },
		{ .name = "all", .methods = ALL_METHODS, .prefix = true, .sources = sources,
		  .nsources = N_ELEMS(sources) },
	};
	struct proxy_config cfg = { .routes = routes, .nroutes = N_ELEMS(routes) };
	int outcomes[3] = { 0 };
	for (int iter = 0; iter < 20000; iter++) {
		/* Every source takes its turn at the front. */
		for (size_t k = 0; k < N_ELEMS(all); k++)
			sources[k] = all[(k + (size_t)iter) % N_ELEMS(all)];
		char path[500], query[500], header[500], cookie[500], claims[500], auth[700], body[500];
		size_t path_len = random_field(path, "/f/", xorshift() % 2 ? "" : "/x");
		size_t query_len = random_field(query, "a=1&uid=", "&b");
		struct test_req t;
		req_init_n(&t, "GET", path, path_len, xorshift() % 4 ? query : NULL, query_len);
		/* Each header is left out one time in four, so that all six
		 * sources often come up empty. */
		size_t len = random_field(header, "", "");
		if (xorshift() % 4)
			req_header_n(&t, "X-User-Id", header, len);
		len = random_field(cookie, "a=1; uid=", "; b=2");
		if (xorshift() % 4)
			req_header_n(&t, "Cookie", cookie, len);
		len = xorshift() % 2 ? random_field(claims, "{\"sub\":\"", "\"}") : random_field(claims, "{\"sub\":", "}");
		memcpy(auth, "Bearer e30.", 11);
		base64url(claims, len, xorshift() % 2, auth + 11);
		strcat(auth, xorshift() % 2 ? ".s" : ".");
		if (xorshift() % 4)
			req_header(&t, "Authorization", xorshift() % 8 ? auth : claims);
		if (xorshift() % 4) {
			len = random_field(body, "{\"user\":{\"id\":\"", "\"}}");
			req_body_n(&t, body, len);
		}

		struct route_match m;
		if (!route_match(&cfg, &t.view, &m)) {
			/* "all" takes every path that begins with '/'. */
			assert_true(path_len == 0 || path[0] != '/');
			m.route = &routes[2];
		}
		for (size_t p = 0; p < m.nparams; p++) {
			assert_true(m.params[p].value >= t.view.path);
			assert_true(m.params[p].value + m.params[p].value_len <= t.view.path + t.view.path_len);
			assert_true(m.params[p].value_len > 0);
		}
		char out[ROUTE_USER_ID_MAX + 1], why[FLAG_ERR_MAX] = "", err[FLAG_ERR_MAX];
		size_t id_len = 1;
		int rc = route_user_id(&m, &t.view, out, &id_len, why, sizeof(why));
		assert_true(rc == USER_ID_FOUND || rc == USER_ID_NONE || rc == USER_ID_BAD);
		outcomes[rc + 1]++;
		if (rc == USER_ID_FOUND) {
			assert_int_equal(strlen(out), id_len);
			assert_int_equal(flag_user_id_check(out, id_len, err, sizeof(err)), 0);
		} else {
			assert_int_equal(id_len, 0);
			assert_string_equal(out, "");
		}
		if (rc == USER_ID_BAD)
			assert_true(why[0] != '\0');
		req_free(&t);
	}
	/* The generator must reach all three outcomes to be worth running
	 * (with this seed: about 10800 bad, 70 none, 9100 found). */
	for (int i = 0; i < 3; i++)
		if (outcomes[i] < 50)
			fail_msg("outcome %d reached %d times", i - 1, outcomes[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_method_bits),
		cmocka_unit_test(test_match_exact_and_params),
		cmocka_unit_test(test_match_prefix),
		cmocka_unit_test(test_match_root),
		cmocka_unit_test(test_match_methods_and_order),
		cmocka_unit_test(test_match_param_limit),
		cmocka_unit_test(test_needs_body),
		cmocka_unit_test(test_path_source),
		cmocka_unit_test(test_header_source),
		cmocka_unit_test(test_cookie_source),
		cmocka_unit_test(test_query_source),
		cmocka_unit_test(test_jwt_source),
		cmocka_unit_test(test_body_source),
		cmocka_unit_test(test_source_order),
		cmocka_unit_test(test_id_length_limits),
		cmocka_unit_test(test_random_requests),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
