/*
 * proxy.h - cutover-proxy: configuration, routes, the HTTP/1.1 core and
 * the workers. Prototypes are grouped by the file that defines them.
 */
#ifndef CUTOVER_PROXY_H
#define CUTOVER_PROXY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flags/flags.h"

/* ---- config.c ---------------------------------------------------------- */

enum upstream_kind { UPSTREAM_LEGACY = 0, UPSTREAM_SERVICE = 1, UPSTREAM_COUNT };

struct upstream_config {
	char *host;
	int port;
	int connect_timeout_ms;
	int read_timeout_ms;
	int write_timeout_ms;
	int keepalive; /* idle connections kept per worker */
};

enum user_source_kind {
	USER_FROM_PATH,   /* a {param} of the route's path */
	USER_FROM_HEADER, /* a request header */
	USER_FROM_COOKIE, /* a cookie of the Cookie header */
	USER_FROM_QUERY,  /* a query parameter */
	USER_FROM_JWT,    /* a claim of an Authorization: Bearer JWT (not verified) */
	USER_FROM_BODY,   /* a field of a JSON body, dotted for nesting: user.id */
};

struct user_source {
	enum user_source_kind kind;
	char *name;
};

/* Method bits, for route method sets. */
enum {
	METHOD_GET = 1 << 0,
	METHOD_HEAD = 1 << 1,
	METHOD_POST = 1 << 2,
	METHOD_PUT = 1 << 3,
	METHOD_PATCH = 1 << 4,
	METHOD_DELETE = 1 << 5,
	METHOD_OPTIONS = 1 << 6,
	METHOD_OTHER = 1 << 7,
	METHODS_READ = METHOD_GET | METHOD_HEAD,
};

/* One segment of a path template: a literal, or a {param} when param is
 * set. */
struct path_segment {
	char *literal;
	char *param;
};

struct route {
	char *name;
	int line; /* in the config file, for messages */
	unsigned methods;
	char *path; /* the template as written: /api/users/{id} or ending in a "*" segment */
	struct path_segment *segments;
	size_t nsegments;
	bool prefix; /* the template ended in / *: deeper paths match too */
	struct user_source *sources; /* tried in order */
	size_t nsources;
	char *read_flag;  /* GET, HEAD; NULL: reads stay on legacy */
	char *write_flag; /* other methods; NULL: writes stay on legacy */
	enum upstream_kind no_user; /* where requests without a user id go */
	bool read_fallback;  /* service reads fall back to legacy behind the breaker */
	int breaker_failures; /* consecutive failures that open the breaker */
	int breaker_open_ms;  /* how long it stays open before a probe */
	bool migrate;         /* first-seen users go onto the migrate stream */
	bool read_guard;      /* service reads (and writes) only for users already migrated */
	bool migrate_first;   /* an unmigrated user's write waits for the migration, instead of legacy */
	int migrate_wait_ms;  /* how long it waits */
	int migrate_timeout_status; /* then: 0 = legacy, or this status (503) */
	enum create_strategy { CREATE_BY_FLAG, CREATE_LEGACY_FIRST, CREATE_SERVICE } create; /* for POST */
	char *created_id; /* legacy-first: "location", or a JSON field of the response body */
	const char *label;    /* the name, interned for metrics (set by the proxy after loading) */
};

struct listen_addr {
	char *host;
	int port;
};

struct proxy_config {
	atomic_int refs;
	char *path;
	struct listen_addr *listen;
	size_t nlisten;
	struct listen_addr admin;
	char *admin_token; /* NULL: none required */
	int workers;       /* resolved: never 0 */
	char *redis_url;
	char *redis_prefix;
	struct upstream_config upstreams[UPSTREAM_COUNT];
	enum upstream_kind default_upstream; /* for requests no route matches */
	struct route *routes;
	size_t nroutes;
	char *force_header; /* NULL: forcing disabled */
	char *force_secret;
	bool route_header; /* add X-Cutover-Route to responses */
	size_t max_header_bytes;
	size_t max_body_bytes;
	int client_timeout_ms; /* idle keep-alive and slow clients */
	int drain_timeout_ms;
	int ready_wait_ms; /* /readyz turns ready without flags after this */
	int migrate_backlog; /* Redis calls in flight per worker; more are dropped and counted */
	int seen_cache;      /* users remembered as enqueued, per worker */
	char *access_log;  /* a path, "stderr" or "off" */
	enum log_level log_level;
};

int config_load(const char *path, struct proxy_config **out, char *err, size_t errlen);
struct proxy_config *config_ref(struct proxy_config *cfg);
void config_unref(struct proxy_config *cfg);
const char *upstream_kind_name(enum upstream_kind kind);

/* ---- route.c ----------------------------------------------------------- */

#define ROUTE_MAX_PARAMS 8
#define ROUTE_USER_ID_MAX FLAG_USER_ID_MAX

/* A request as route.c sees it: byte ranges into the connection's
 * buffer, valid for the duration of the call. */
struct http_header_view {
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
};

struct http_view {
	unsigned method;   /* one METHOD_* bit */
	const char *path;  /* without the query */
	size_t path_len;
	const char *query; /* after '?', or NULL */
	size_t query_len;
	const struct http_header_view *headers;
	size_t nheaders;
	const char *body; /* the whole body when the route reads it, else NULL */
	size_t body_len;
};

struct route_match {
	const struct route *route;
	size_t nparams;
	struct {
		const char *name; /* borrowed from the route */
		const char *value; /* raw (still percent-encoded) span of the path */
		size_t value_len;
	} params[ROUTE_MAX_PARAMS];
};

unsigned http_method_bit(const char *name, size_t len);
bool route_match(const struct proxy_config *cfg, const struct http_view *req, struct route_match *m);
bool route_needs_body(const struct route *r);

enum user_id_result { USER_ID_BAD = -1, USER_ID_NONE = 0, USER_ID_FOUND = 1 };
int route_user_id(const struct route_match *m, const struct http_view *req, char *out, size_t *len,
		  char *why, size_t whylen);

#endif
