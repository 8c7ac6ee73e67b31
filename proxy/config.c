/*
 * config.c - cutover-proxy's configuration file (conf/cutover.conf, in
 * libconfuse syntax), checked as a whole and turned into an immutable
 * struct proxy_config that threads share by reference counting.
 *
 * Loading, line tracking and "FILE:LINE: reason" errors (the first
 * only, as `nginx -t` does) are common/conf.c, shared with the migrator;
 * this file holds the options and what each value must be.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/conf.h"
#include "proxy.h"

#define WHY_MAX 256
#define WORKERS_MAX 1024
#define FORCE_SECRET_MIN 16

static cfg_opt_t upstream_opts[] = {
	CFG_STR("address", NULL, CFGF_NONE),
	CFG_INT_CB("connect_timeout", 1000, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("read_timeout", 30000, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("write_timeout", 30000, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("keepalive", 64, CFGF_NONE, conf_plain_decimal),
	CFG_END(),
};

static cfg_opt_t limits_opts[] = {
	CFG_INT_CB("header_bytes", 16384, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("body_bytes", 1048576, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("client_timeout", 60000, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("drain_timeout", 10000, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("ready_wait", 5000, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("migrate_backlog", 10000, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("seen_cache", 1000000, CFGF_NONE, conf_plain_decimal),
	CFG_END(),
};

static cfg_opt_t route_opts[] = {
	CFG_STR_LIST("methods", "{GET, HEAD, POST, PUT, PATCH, DELETE}", CFGF_NONE),
	CFG_STR("path", NULL, CFGF_NONE),
	CFG_STR_LIST("user", NULL, CFGF_NONE),
	CFG_STR("read_flag", NULL, CFGF_NONE),
	CFG_STR("write_flag", NULL, CFGF_NONE),
	CFG_STR("no_user", "legacy", CFGF_NONE),
	CFG_BOOL("read_fallback", cfg_false, CFGF_NONE),
	CFG_INT_CB("breaker_failures", 5, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("breaker_open", 10000, CFGF_NONE, conf_plain_decimal),
	CFG_BOOL("migrate", cfg_false, CFGF_NONE),
	CFG_BOOL("read_guard", cfg_false, CFGF_NONE),
	CFG_STR("unmigrated_writes", "legacy", CFGF_NONE),
	CFG_INT_CB("migrate_wait", 2000, CFGF_NONE, conf_plain_decimal),
	CFG_STR("migrate_timeout", "legacy", CFGF_NONE),
	CFG_STR("create", NULL, CFGF_NONE),
	CFG_STR("created_id", "location", CFGF_NONE),
	CFG_END(),
};

static cfg_opt_t root_opts[] = {
	CFG_STR_LIST("listen", "{\"0.0.0.0:8080\"}", CFGF_NONE),
	CFG_STR("admin_listen", "127.0.0.1:9901", CFGF_NONE),
	CFG_STR("admin_token", NULL, CFGF_NONE),
	CFG_INT_CB("workers", 0, CFGF_NONE, conf_plain_decimal),
	CFG_SEC("redis", conf_redis_opts, CFGF_NONE),
	CFG_SEC("upstream", upstream_opts, CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES),
	CFG_STR("default", "legacy", CFGF_NONE),
	CFG_STR("force_header", NULL, CFGF_NONE),
	CFG_STR("force_secret", NULL, CFGF_NONE),
	CFG_BOOL("route_header", cfg_true, CFGF_NONE),
	CFG_SEC("limits", limits_opts, CFGF_NONE),
	CFG_STR("access_log", "stderr", CFGF_NONE),
	CFG_STR("log_level", "info", CFGF_NONE),
	CFG_SEC("route", route_opts, CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES),
	CFG_END(),
};

static const struct {
	const char *name;
	unsigned bit;
} method_names[] = {
	{ "GET", METHOD_GET },     { "HEAD", METHOD_HEAD },     { "POST", METHOD_POST },
	{ "PUT", METHOD_PUT },     { "PATCH", METHOD_PATCH },   { "DELETE", METHOD_DELETE },
	{ "OPTIONS", METHOD_OPTIONS },
};

/* "legacy" or "service": how the file and the logs name an upstream. */
const char *upstream_kind_name(enum upstream_kind kind)
{
	return kind == UPSTREAM_SERVICE ? "service" : "legacy";
}

/* RFC 9110 token characters: header and cookie names. */
static bool is_token_char(char c)
{
	return conf_is_word_char(c) || (c != '\0' && strchr("!#$%&'*+-.^`|~", c) != NULL);
}

static bool is_host_char(char c)
{
	return conf_is_word_char(c) || c == '-' || c == '.';
}

static bool is_query_char(char c)
{
	return conf_is_visible(c) && c != '&' && c != '=' && c != '#';
}

static bool is_literal_char(char c)
{
	return conf_is_visible(c) && strchr("?#{}*", c) == NULL;
}

/* Parses "host:port" or "[IPv6]:port" into *host (a new string, without
 * the brackets) and *port. */
static int parse_address(const char *text, char **host, int *port, char *why, size_t whylen)
{
	const char *colon = strrchr(text, ':');
	if (colon == NULL) {
		snprintf(why, whylen, "'%s' is not host:port", text);
		return -1;
	}
	const char *h = text;
	size_t hlen = (size_t)(colon - text);
	struct in6_addr a6;
	char *name = NULL;
	if (text[0] == '[') {
		if (hlen < 3 || text[hlen - 1] != ']') {
			snprintf(why, whylen, "'%s' is not [IPv6]:port", text);
			return -1;
		}
		name = xstrndup(h + 1, hlen - 2);
		if (inet_pton(AF_INET6, name, &a6) != 1) {
			snprintf(why, whylen, "'%s' is not an IPv6 address", name);
			goto fail;
		}
	} else {
		if (hlen == 0 || conf_span(h, hlen, is_host_char) != hlen) {
			snprintf(why, whylen,
				 "'%.*s' is not a host name or IPv4 address (IPv6 goes in brackets: [::1]:8080)",
				 (int)hlen, h);
			return -1;
		}
		name = xstrndup(h, hlen);
	}
	if (parse_decimal(colon + 1, strlen(colon + 1), 1, 65535, port) < 0) {
		snprintf(why, whylen, "port '%s' is not in 1..65535", colon + 1);
		goto fail;
	}
	*host = name;
	return 0;
fail:
	free(name);
	return -1;
}

/* Reads one address (text, from option name of sec) into *host, *port. */
static int get_address(struct conf_loader *ld, cfg_t *sec, const char *name, const char *text,
		       char **host, int *port)
{
	char why[WHY_MAX];
	if (parse_address(text, host, port, why, sizeof(why)) < 0)
		return conf_fail(ld, sec, name, "%s", why);
	return 0;
}

/* "legacy" or "service" into *out. */
static int parse_kind(const char *text, enum upstream_kind *out)
{
	for (int k = 0; k < UPSTREAM_COUNT; k++) {
		if (strcmp(text, upstream_kind_name((enum upstream_kind)k)) == 0) {
			*out = (enum upstream_kind)k;
			return 0;
		}
	}
	return -1;
}

/* Reads "legacy" or "service" from option name of sec. */
static int get_kind(struct conf_loader *ld, cfg_t *sec, const char *name, enum upstream_kind *out)
{
	const char *text = cfg_getstr(sec, name);
	if (parse_kind(text, out) < 0)
		return conf_fail(ld, sec, name, "must be legacy or service, not '%s'", text);
	return 0;
}

/* Reads an optional flag name: *out stays NULL when the option is unset. */
static int get_flag(struct conf_loader *ld, cfg_t *sec, const char *name, char **out)
{
	const char *text = cfg_getstr(sec, name);
	char why[WHY_MAX];
	if (text == NULL)
		return 0;
	if (flag_name_check(text, why, sizeof(why)) < 0)
		return conf_fail(ld, sec, name, "flag name '%s' %s", text, why);
	*out = xstrdup(text);
	return 0;
}

/* The number of online CPUs, within 1..WORKERS_MAX. */
static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		return 1;
	return n > WORKERS_MAX ? WORKERS_MAX : (int)n;
}

/* listen, admin_listen, admin_token and workers (0 resolved to the number
 * of online CPUs). */
static int build_server(struct conf_loader *ld, cfg_t *root, struct proxy_config *cfg)
{
	unsigned n = cfg_size(root, "listen");
	if (n == 0)
		return conf_fail(ld, root, "listen", "needs at least one address");
	cfg->listen = xcalloc(n, sizeof(*cfg->listen));
	cfg->nlisten = n;
	for (unsigned i = 0; i < n; i++) {
		struct listen_addr *a = &cfg->listen[i];
		if (get_address(ld, root, "listen", cfg_getnstr(root, "listen", i), &a->host, &a->port) < 0)
			return -1;
	}
	if (get_address(ld, root, "admin_listen", cfg_getstr(root, "admin_listen"), &cfg->admin.host,
			&cfg->admin.port) < 0)
		return -1;
	const char *token = cfg_getstr(root, "admin_token");
	if (token != NULL && !conf_all_of(token, conf_is_visible))
		return conf_fail(ld, root, "admin_token", "must be visible characters, without spaces");
	cfg->admin_token = token ? xstrdup(token) : NULL;
	int workers = 0;
	if (conf_get_int(ld, root, "workers", 0, WORKERS_MAX, &workers) < 0)
		return -1;
	cfg->workers = workers > 0 ? workers : online_cpus();
	return 0;
}

/* One upstream { } section; its address is required. */
static int build_upstream(struct conf_loader *ld, cfg_t *sec, struct upstream_config *u)
{
	const char *address = cfg_getstr(sec, "address");
	if (address == NULL)
		return conf_fail(ld, sec, NULL, "address is required");
	if (get_address(ld, sec, "address", address, &u->host, &u->port) < 0 ||
	    conf_get_int(ld, sec, "connect_timeout", 1, CONF_DURATION_MAX, &u->connect_timeout_ms) < 0 ||
	    conf_get_int(ld, sec, "read_timeout", 1, CONF_DURATION_MAX, &u->read_timeout_ms) < 0 ||
	    conf_get_int(ld, sec, "write_timeout", 1, CONF_DURATION_MAX, &u->write_timeout_ms) < 0 ||
	    conf_get_int(ld, sec, "keepalive", 0, 10000, &u->keepalive) < 0)
		return -1;
	return 0;
}

/* Exactly one "upstream legacy" and one "upstream service" (libconfuse
 * refuses a title given twice). */
static int build_upstreams(struct conf_loader *ld, cfg_t *root, struct proxy_config *cfg)
{
	bool seen[UPSTREAM_COUNT] = { false };
	unsigned n = cfg_size(root, "upstream");
	for (unsigned i = 0; i < n; i++) {
		cfg_t *sec = cfg_getnsec(root, "upstream", i);
		enum upstream_kind kind;
		if (parse_kind(cfg_title(sec), &kind) < 0)
			return conf_fail(ld, sec, NULL, "an upstream is named legacy or service");
		seen[kind] = true;
		if (build_upstream(ld, sec, &cfg->upstreams[kind]) < 0)
			return -1;
	}
	for (int k = 0; k < UPSTREAM_COUNT; k++)
		if (!seen[k])
			return conf_report(ld, 0, "upstream %s { address = \"host:port\" } is missing",
				      upstream_kind_name((enum upstream_kind)k));
	return 0;
}

/* force_header and force_secret (both or neither), and route_header. */
static int build_headers(struct conf_loader *ld, cfg_t *root, struct proxy_config *cfg)
{
	const char *header = cfg_getstr(root, "force_header");
	const char *secret = cfg_getstr(root, "force_secret");
	cfg->route_header = cfg_getbool(root, "route_header");
	if ((header == NULL) != (secret == NULL))
		return conf_fail(ld, root, header ? "force_header" : "force_secret",
			    "force_header and force_secret go together: set both or neither");
	if (header == NULL)
		return 0;
	if (!conf_all_of(header, is_token_char))
		return conf_fail(ld, root, "force_header", "'%s' is not a header name", header);
	if (strlen(secret) < FORCE_SECRET_MIN || !conf_all_of(secret, conf_is_visible))
		return conf_fail(ld, root, "force_secret", "must be at least %d visible characters, without spaces",
			    FORCE_SECRET_MIN);
	cfg->force_header = xstrdup(header);
	cfg->force_secret = xstrdup(secret);
	return 0;
}

/* The limits { } section. */
static int build_limits(struct conf_loader *ld, cfg_t *sec, struct proxy_config *cfg)
{
	int header_bytes = 0, body_bytes = 0;
	if (conf_get_int(ld, sec, "header_bytes", 1024, 1048576, &header_bytes) < 0 ||
	    conf_get_int(ld, sec, "body_bytes", 0, 1073741824, &body_bytes) < 0 ||
	    conf_get_int(ld, sec, "client_timeout", 1, CONF_DURATION_MAX, &cfg->client_timeout_ms) < 0 ||
	    conf_get_int(ld, sec, "drain_timeout", 1, CONF_DURATION_MAX, &cfg->drain_timeout_ms) < 0 ||
	    conf_get_int(ld, sec, "ready_wait", 1, CONF_DURATION_MAX, &cfg->ready_wait_ms) < 0 ||
	    conf_get_int(ld, sec, "migrate_backlog", 1, 1000000, &cfg->migrate_backlog) < 0 ||
	    conf_get_int(ld, sec, "seen_cache", 0, 100000000, &cfg->seen_cache) < 0)
		return -1;
	cfg->max_header_bytes = (size_t)header_bytes;
	cfg->max_body_bytes = (size_t)body_bytes;
	return 0;
}

/* access_log and log_level. */
static int build_logging(struct conf_loader *ld, cfg_t *root, struct proxy_config *cfg)
{
	const char *access_log = cfg_getstr(root, "access_log");
	const char *level = cfg_getstr(root, "log_level");
	if (strcmp(access_log, "stderr") != 0 && strcmp(access_log, "off") != 0 && access_log[0] != '/')
		return conf_fail(ld, root, "access_log", "must be \"stderr\", \"off\" or an absolute path, not '%s'",
			    access_log);
	if (log_level_parse(level, &cfg->log_level) < 0)
		return conf_fail(ld, root, "log_level", "must be error, warn, info or debug, not '%s'", level);
	cfg->access_log = xstrdup(access_log);
	return 0;
}

/* Why a character cannot be part of a literal path segment. */
static const char *literal_problem(char c)
{
	if (c == '*')
		return "'*' may only be the last segment";
	if (c == '{' || c == '}')
		return "a {parameter} must be a whole segment";
	return "has a character not allowed in a path";
}

/* Parses seg[0..len), a literal or a whole {name}, into the last of
 * r->segments. */
static int parse_segment(const char *seg, size_t len, struct route *r, char *why, size_t whylen)
{
	struct path_segment *s = &r->segments[r->nsegments - 1];
	if (len == 0) {
		snprintf(why, whylen, "has an empty segment");
		return -1;
	}
	if (seg[0] != '{') {
		size_t ok = conf_span(seg, len, is_literal_char);
		if (ok < len) {
			snprintf(why, whylen, "segment '%.*s': %s", (int)len, seg, literal_problem(seg[ok]));
			return -1;
		}
		s->literal = xstrndup(seg, len);
		return 0;
	}
	size_t namelen = len >= 2 ? len - 2 : 0;
	if (namelen == 0 || seg[len - 1] != '}' || conf_span(seg + 1, namelen, conf_is_word_char) != namelen) {
		snprintf(why, whylen, "segment '%.*s': a {parameter} is named with letters, digits and '_'",
			 (int)len, seg);
		return -1;
	}
	s->param = xstrndup(seg + 1, namelen);
	size_t nparams = 1;
	for (size_t i = 0; i + 1 < r->nsegments; i++) {
		if (r->segments[i].param == NULL)
			continue;
		if (strcmp(r->segments[i].param, s->param) == 0) {
			snprintf(why, whylen, "names {%s} twice", s->param);
			return -1;
		}
		nparams++;
	}
	if (nparams > ROUTE_MAX_PARAMS) {
		snprintf(why, whylen, "has more than %d parameters", ROUTE_MAX_PARAMS);
		return -1;
	}
	return 0;
}

/*
 * Parses a path template into r->segments, r->nsegments and r->prefix, as
 * route.c reads them: '/'-separated segments, each a literal or a whole
 * {name}, the last of which may be '*' to make a prefix route (the '*' is
 * not kept). "/" alone is one empty literal, matching the path "/" only;
 * "/" then '*' has no segments and is a prefix of every path. What it
 * allocates belongs to r even when it fails.
 */
static int parse_path(const char *text, struct route *r, char *why, size_t whylen)
{
	size_t len = strlen(text);
	if (text[0] != '/') {
		snprintf(why, whylen, "must start with '/'");
		return -1;
	}
	r->prefix = len >= 2 && strcmp(text + len - 2, "/*") == 0;
	size_t end = r->prefix ? len - 2 : len; /* text[0..end) holds the segments */
	if (end == 0)
		return 0;
	if (strcmp(text, "/") == 0) {
		r->segments = xcalloc(1, sizeof(*r->segments));
		r->nsegments = 1;
		r->segments[0].literal = xstrdup("");
		return 0;
	}
	size_t n = 0;
	for (size_t i = 0; i < end; i++)
		n += text[i] == '/';
	r->segments = xcalloc(n, sizeof(*r->segments));
	const char *seg = text + 1;
	while (r->nsegments < n) {
		size_t seglen = strcspn(seg, "/");
		r->nsegments++;
		if (parse_segment(seg, seglen, r, why, whylen) < 0)
			return -1;
		seg += seglen + 1;
	}
	return 0;
}

/* Whether r's path has a {name} segment. */
static bool has_param(const struct route *r, const char *name)
{
	for (size_t i = 0; i < r->nsegments; i++)
		if (r->segments[i].param && strcmp(r->segments[i].param, name) == 0)
			return true;
	return false;
}

/* The user sources: how each is written, what its name names in messages,
 * and the characters that name may use. */
static const struct {
	const char *prefix;
	const char *noun;
	bool (*ok)(char);
} source_kinds[] = {
	[USER_FROM_PATH] = { "path:", "path parameter", conf_is_word_char },
	[USER_FROM_HEADER] = { "header:", "header", is_token_char },
	[USER_FROM_COOKIE] = { "cookie:", "cookie", is_token_char },
	[USER_FROM_QUERY] = { "query:", "query parameter", is_query_char },
	[USER_FROM_JWT] = { "jwt:", "claim", conf_is_visible },
	[USER_FROM_BODY] = { "body:", "field", conf_is_visible },
};

/* Parses one user source, "kind:NAME", into *out (out->name is new). */
static int parse_source(const char *text, struct user_source *out, char *why, size_t whylen)
{
	size_t k = 0, nkinds = sizeof(source_kinds) / sizeof(source_kinds[0]);
	while (k < nkinds && strncmp(text, source_kinds[k].prefix, strlen(source_kinds[k].prefix)) != 0)
		k++;
	if (k == nkinds) {
		snprintf(why, whylen,
			 "unknown source '%s': expected path:NAME, header:NAME, cookie:NAME, query:NAME, "
			 "jwt:CLAIM or body:FIELD",
			 text);
		return -1;
	}
	const char *name = text + strlen(source_kinds[k].prefix);
	bool ok = conf_all_of(name, source_kinds[k].ok);
	if (k == USER_FROM_BODY) /* dotted for nesting, each part non-empty */
		ok = ok && name[0] != '.' && name[strlen(name) - 1] != '.' && strstr(name, "..") == NULL;
	if (!ok) {
		snprintf(why, whylen, "source '%s': '%s' is not a valid %s name", text, name, source_kinds[k].noun);
		return -1;
	}
	out->kind = (enum user_source_kind)k;
	out->name = xstrdup(name);
	return 0;
}

/* The route's methods, as METHOD_* bits in *out; at least one. */
static int get_methods(struct conf_loader *ld, cfg_t *sec, unsigned *out)
{
	unsigned n = cfg_size(sec, "methods");
	size_t nnames = sizeof(method_names) / sizeof(method_names[0]);
	if (n == 0)
		return conf_fail(ld, sec, "methods", "needs at least one method");
	*out = 0;
	for (unsigned i = 0; i < n; i++) {
		const char *name = cfg_getnstr(sec, "methods", i);
		size_t m = 0;
		while (m < nnames && strcmp(name, method_names[m].name) != 0)
			m++;
		if (m == nnames)
			return conf_fail(ld, sec, "methods", "'%s' is not one of GET HEAD POST PUT PATCH DELETE OPTIONS", name);
		*out |= method_names[m].bit;
	}
	return 0;
}

/* The route's user sources, in order, into r->sources; at least one, and
 * a path: source must name a {parameter} of r's path (parsed already). */
static int get_sources(struct conf_loader *ld, cfg_t *sec, struct route *r)
{
	unsigned n = cfg_size(sec, "user");
	char why[WHY_MAX];
	if (n == 0)
		return conf_fail(ld, sec, "user", "needs at least one source (path:, header:, cookie:, query:, jwt: or body:)");
	r->sources = xcalloc(n, sizeof(*r->sources));
	for (unsigned i = 0; i < n; i++) {
		const char *text = cfg_getnstr(sec, "user", i);
		struct user_source *s = &r->sources[r->nsources++];
		if (parse_source(text, s, why, sizeof(why)) < 0)
			return conf_fail(ld, sec, "user", "%s", why);
		if (s->kind == USER_FROM_PATH && !has_param(r, s->name))
			return conf_fail(ld, sec, "user", "source '%s': the path '%s' has no {%s}", text, r->path, s->name);
	}
	return 0;
}

/* One route { } section into r, which owns what is allocated even when
 * this fails. */
static int build_route(struct conf_loader *ld, cfg_t *sec, struct route *r)
{
	const char *path = cfg_getstr(sec, "path");
	char why[WHY_MAX];
	r->name = xstrdup(cfg_title(sec));
	r->line = conf_section_line(ld, sec);
	if (flag_name_check(r->name, why, sizeof(why)) < 0)
		return conf_fail(ld, sec, NULL, "a route name %s", why);
	if (get_methods(ld, sec, &r->methods) < 0)
		return -1;
	if (path == NULL)
		return conf_fail(ld, sec, NULL, "path is required");
	r->path = xstrdup(path);
	if (parse_path(path, r, why, sizeof(why)) < 0)
		return conf_fail(ld, sec, "path", "'%s' %s", path, why);
	if (get_sources(ld, sec, r) < 0 || get_flag(ld, sec, "read_flag", &r->read_flag) < 0 ||
	    get_flag(ld, sec, "write_flag", &r->write_flag) < 0)
		return -1;
	if (r->read_flag == NULL && r->write_flag == NULL)
		return conf_fail(ld, sec, NULL, "routes nothing to the service: set read_flag, write_flag or both");
	r->read_fallback = cfg_getbool(sec, "read_fallback");
	r->migrate = cfg_getbool(sec, "migrate");
	r->read_guard = cfg_getbool(sec, "read_guard");
	const char *writes = cfg_getstr(sec, "unmigrated_writes"), *timeout = cfg_getstr(sec, "migrate_timeout");
	if (strcmp(writes, "legacy") != 0 && strcmp(writes, "migrate-first") != 0)
		return conf_fail(ld, sec, "unmigrated_writes", "must be legacy or migrate-first, not '%s'", writes);
	r->migrate_first = strcmp(writes, "migrate-first") == 0;
	if (r->migrate_first && !(r->migrate && r->read_guard))
		return conf_fail(ld, sec, "unmigrated_writes", "migrate-first needs migrate = true and read_guard = true");
	if (strcmp(timeout, "legacy") != 0 && strcmp(timeout, "503") != 0)
		return conf_fail(ld, sec, "migrate_timeout", "must be legacy or 503, not '%s'", timeout);
	r->migrate_timeout_status = strcmp(timeout, "503") == 0 ? 503 : 0;
	const char *create = cfg_getstr(sec, "create"), *created_id = cfg_getstr(sec, "created_id");
	if (create != NULL && strcmp(create, "legacy-first") != 0 && strcmp(create, "service") != 0)
		return conf_fail(ld, sec, "create", "must be legacy-first or service, not '%s'", create);
	r->create = create == NULL ? CREATE_BY_FLAG : strcmp(create, "service") == 0 ? CREATE_SERVICE : CREATE_LEGACY_FIRST;
	if (strcmp(created_id, "location") != 0 && (strncmp(created_id, "json:", 5) != 0 || created_id[5] == '\0'))
		return conf_fail(ld, sec, "created_id", "must be location or json:FIELD, not '%s'", created_id);
	if (r->create == CREATE_LEGACY_FIRST && !r->migrate)
		return conf_fail(ld, sec, "create", "legacy-first enqueues the new user: it needs migrate = true");
	r->created_id = xstrdup(created_id);
	if (get_kind(ld, sec, "no_user", &r->no_user) < 0 ||
	    conf_get_int(ld, sec, "breaker_failures", 1, 1000, &r->breaker_failures) < 0 ||
	    conf_get_int(ld, sec, "breaker_open", 1, CONF_DURATION_MAX, &r->breaker_open_ms) < 0 ||
	    conf_get_int(ld, sec, "migrate_wait", 1, CONF_DURATION_MAX, &r->migrate_wait_ms) < 0)
		return -1;
	return 0;
}

/* Every route { } section, in file order: the order they are tried in. */
static int build_routes(struct conf_loader *ld, cfg_t *root, struct proxy_config *cfg)
{
	unsigned n = cfg_size(root, "route");
	if (n == 0)
		return 0;
	cfg->routes = xcalloc(n, sizeof(*cfg->routes));
	cfg->nroutes = n;
	for (unsigned i = 0; i < n; i++)
		if (build_route(ld, cfg_getnsec(root, "route", i), &cfg->routes[i]) < 0)
			return -1;
	return 0;
}

/* Checks everything libconfuse does not, roughly in the order of the
 * shipped file, filling the struct proxy_config at arg. */
static int build_config(struct conf_loader *ld, cfg_t *root, void *arg)
{
	struct proxy_config *cfg = arg;
	if (build_server(ld, root, cfg) < 0 || conf_get_redis(ld, cfg_getsec(root, "redis"), &cfg->redis_url, &cfg->redis_prefix) < 0 ||
	    build_upstreams(ld, root, cfg) < 0 || get_kind(ld, root, "default", &cfg->default_upstream) < 0 ||
	    build_headers(ld, root, cfg) < 0 ||
	    build_limits(ld, cfg_getsec(root, "limits"), cfg) < 0 || build_logging(ld, root, cfg) < 0 ||
	    build_routes(ld, root, cfg) < 0)
		return -1;
	return 0;
}

/* Frees what r owns, not r. */
static void route_free(struct route *r)
{
	free(r->name);
	free(r->path);
	for (size_t i = 0; i < r->nsegments; i++) {
		free(r->segments[i].literal);
		free(r->segments[i].param);
	}
	free(r->segments);
	for (size_t i = 0; i < r->nsources; i++)
		free(r->sources[i].name);
	free(r->sources);
	free(r->read_flag);
	free(r->write_flag);
	free(r->created_id);
}

/* Frees cfg and everything it owns, whatever its reference count; also
 * takes a half-built configuration. */
static void config_free(struct proxy_config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	for (size_t i = 0; i < cfg->nlisten; i++)
		free(cfg->listen[i].host);
	free(cfg->listen);
	free(cfg->admin.host);
	free(cfg->admin_token);
	free(cfg->redis_url);
	free(cfg->redis_prefix);
	for (int k = 0; k < UPSTREAM_COUNT; k++)
		free(cfg->upstreams[k].host);
	for (size_t i = 0; i < cfg->nroutes; i++)
		route_free(&cfg->routes[i]);
	free(cfg->routes);
	free(cfg->force_header);
	free(cfg->force_secret);
	free(cfg->access_log);
	free(cfg);
}

/*
 * Reads and checks the configuration file at path. Returns 0 and a new
 * configuration in *out (one reference, released with config_unref; it
 * owns all its strings), or -1 with the first problem in err as
 * "FILE:LINE: reason", *out untouched. Safe to call from any thread.
 */
int config_load(const char *path, struct proxy_config **out, char *err, size_t errlen)
{
	struct proxy_config *cfg = xcalloc(1, sizeof(*cfg));
	atomic_init(&cfg->refs, 1);
	cfg->path = xstrdup(path);
	if (conf_load(path, root_opts, build_config, cfg, err, errlen) < 0) {
		config_free(cfg);
		return -1;
	}
	*out = cfg;
	return 0;
}

/* Takes another reference to cfg, for another thread; returns cfg. */
struct proxy_config *config_ref(struct proxy_config *cfg)
{
	atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
	return cfg;
}

/* Drops a reference; the last one frees the configuration. NULL is a
 * no-op. */
void config_unref(struct proxy_config *cfg)
{
	if (cfg == NULL || atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) != 1)
		return;
	config_free(cfg);
}
