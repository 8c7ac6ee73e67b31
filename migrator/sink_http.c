/*
 * sink_http.c - delivers users to the service over HTTP: one
 * `PUT url-with-{id}` per user with the document as relaxed extended JSON
 * (libbson), Content-Type: application/json, and X-Cutover-Version
 * carrying the legacy document's version field when it has one.
 *
 * The client is libevent's evhttp, run synchronously on a private
 * event_base: one keep-alive connection, one request at a time, the loop
 * broken by the request's callback. A request that fails with the
 * connection closed under it (a keep-alive connection the service
 * dropped while idle) is sent once more on a fresh connection: a PUT can
 * be repeated.
 *
 * Outcomes: 2xx delivered; 409 Conflict delivered too (the service's
 * version guard kept a newer copy); 408 and 429 retry; any other 4xx
 * dead-letters at once with reason sink-4xx, the status and the start of
 * the body; 5xx, other statuses, connect errors and timeouts retry.
 * After 3 requests in a row with no response at all, the rest of the
 * batch is not tried (deferred): against a service that swallows
 * packets, every request would wait for the whole timeout, and a stop
 * signal for the whole batch.
 *
 * The client half (struct http_client) also serves `cutoverctl migration
 * verify`, which GETs each user from the service's read API.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "migrator/migrator.h"

#define ID_PLACEHOLDER "{id}"
#define RESPONSE_BODY_MAX (1 << 20)
#define VERSION_MAX 128
#define UNANSWERED_MAX 3 /* requests in a row without a response */

/* One service at a URL template: one connection, one request at a time. */
struct http_client {
	struct event_base *loop;
	struct evhttp_connection *conn;
	char *host;
	int port;
	char *host_header;   /* "host:port" */
	char *path_template; /* path and query, with {id} */
	struct timeval timeout;
};

struct sink_http {
	struct sink base;
	struct http_client *client;
	const char *version_field;
};

/* What one request came back with. */
struct exchange {
	struct event_base *loop;
	int status; /* 0: no response */
	enum evhttp_request_error error;
	bool have_error;
	int sys_errno;
	char excerpt[HTTP_EXCERPT + 1];
	struct buf *body; /* where the whole body goes, or NULL */
};

/* The parts of a sink URL: new strings in *host and *path. */
static int parse_url(const char *url, char **host, int *port, char **path, char *why, size_t whylen)
{
	const char *scheme_end = strstr(url, "://");
	if (scheme_end == NULL || (size_t)(scheme_end - url) != 4 || strncasecmp(url, "http", 4) != 0) {
		snprintf(why, whylen, "'%s' is not an http:// URL (for https, put a local TLS proxy in front)", url);
		return -1;
	}
	const char *path_start = strchr(scheme_end + 3, '/');
	if (path_start == NULL || strstr(path_start, ID_PLACEHOLDER) == NULL) {
		snprintf(why, whylen, "'%s' has no %s in its path: every user would go to the same URL", url,
			 ID_PLACEHOLDER);
		return -1;
	}
	if (strchr(url, '#') != NULL) {
		snprintf(why, whylen, "'%s' has a fragment", url);
		return -1;
	}
	/* evhttp checks the rest, on the URL with a sample id. */
	struct buf sample;
	buf_init(&sample);
	buf_append(&sample, url, (size_t)(path_start - url));
	buf_puts(&sample, "/");
	struct evhttp_uri *u = evhttp_uri_parse(sample.data);
	buf_free(&sample);
	const char *h = u ? evhttp_uri_get_host(u) : NULL;
	int rc = -1;
	if (h == NULL || h[0] == '\0')
		snprintf(why, whylen, "'%s' has no host", url);
	else if (evhttp_uri_get_userinfo(u) != NULL)
		snprintf(why, whylen, "'%s' has user information, which cutover does not send", url);
	else
		rc = 0;
	if (rc == 0) {
		*host = xstrdup(h);
		*port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
		*path = xstrdup(path_start);
	}
	if (u)
		evhttp_uri_free(u);
	return rc;
}

/* Whether url can be the sink's: http, a host, {id} in the path. */
int sink_http_check_url(const char *url, char *why, size_t whylen)
{
	char *host = NULL, *path = NULL;
	int port;
	if (parse_url(url, &host, &port, &path, why, whylen) < 0)
		return -1;
	free(host);
	free(path);
	return 0;
}

/* The version value as header text, into out. Returns 0, or -1 with why
 * for a type with no text form that orders like the value. */
static int version_text(const bson_iter_t *it, char *out, size_t outlen, char *why, size_t whylen)
{
	uint32_t len, t, i;
	const char *s;
	switch (bson_iter_type(it)) {
	case BSON_TYPE_UTF8:
		s = bson_iter_utf8(it, &len);
		if (len == 0 || len >= outlen) {
			snprintf(why, whylen, "is a string of %u bytes (1 to %zu)", len, outlen - 1);
			return -1;
		}
		for (uint32_t k = 0; k < len; k++) {
			if ((unsigned char)s[k] < 0x20 || s[k] == 0x7f) {
				snprintf(why, whylen, "has a control character");
				return -1;
			}
		}
		memcpy(out, s, len);
		out[len] = '\0';
		return 0;
	case BSON_TYPE_INT32:
		snprintf(out, outlen, "%d", bson_iter_int32(it));
		return 0;
	case BSON_TYPE_INT64:
		snprintf(out, outlen, "%lld", (long long)bson_iter_int64(it));
		return 0;
	case BSON_TYPE_DOUBLE:
		snprintf(out, outlen, "%.17g", bson_iter_double(it));
		return 0;
	case BSON_TYPE_DATE_TIME:
		format_utc_ms(bson_iter_date_time(it), out, outlen);
		return 0;
	case BSON_TYPE_TIMESTAMP:
		bson_iter_timestamp(it, &t, &i);
		snprintf(out, outlen, "%llu", ((unsigned long long)t << 32) | i);
		return 0;
	case BSON_TYPE_OID:
		bson_oid_to_string(bson_iter_oid(it), out);
		return 0;
	default:
		snprintf(why, whylen, "has BSON type 0x%02x, which has no header form", (unsigned)bson_iter_type(it));
		return -1;
	}
}

/* The request target: the path template with every {id} replaced by the
 * percent-encoded id. */
static void request_target(const struct http_client *h, const char *id, struct buf *out)
{
	char *encoded = evhttp_uriencode(id, -1, 0);
	size_t plen = strlen(ID_PLACEHOLDER);
	const char *p = h->path_template, *hit;
	buf_reset(out);
	while ((hit = strstr(p, ID_PLACEHOLDER)) != NULL) {
		buf_append(out, p, (size_t)(hit - p));
		buf_puts(out, encoded);
		p = hit + plen;
	}
	buf_puts(out, p);
	free(encoded);
}

static void on_request_error(enum evhttp_request_error error, void *arg)
{
	struct exchange *x = arg;
	x->error = error;
	x->have_error = true;
	x->sys_errno = errno;
}

/* The response, or NULL after a failure (on_request_error ran first,
 * except for a failed connect). */
static void on_response(struct evhttp_request *req, void *arg)
{
	struct exchange *x = arg;
	if (req != NULL)
		x->status = evhttp_request_get_response_code(req);
	if (x->status != 0) {
		struct evbuffer *body = evhttp_request_get_input_buffer(req);
		ev_ssize_t n = evbuffer_copyout(body, x->excerpt, HTTP_EXCERPT);
		for (ev_ssize_t i = 0; i < n; i++)
			if ((unsigned char)x->excerpt[i] < 0x20 || (unsigned char)x->excerpt[i] >= 0x7f)
				x->excerpt[i] = '?';
		x->excerpt[n > 0 ? n : 0] = '\0';
		size_t len = evbuffer_get_length(body);
		if (x->body && len > 0)
			buf_append(x->body, evbuffer_pullup(body, -1), len);
	}
	event_base_loopbreak(x->loop);
}

/* A fresh connection to the service, replacing the old one. */
static void reconnect(struct http_client *h)
{
	if (h->conn)
		evhttp_connection_free(h->conn);
	h->conn = evhttp_connection_base_new(h->loop, NULL, h->host, (unsigned short)h->port);
	evhttp_connection_set_timeout_tv(h->conn, &h->timeout);
	evhttp_connection_set_max_body_size(h->conn, RESPONSE_BODY_MAX);
}

/* Sends one request (a JSON body, or none when json is NULL) and runs
 * the loop until it is answered or failed. */
static void send_once(struct http_client *h, enum evhttp_cmd_type cmd, const char *target, const char *json,
		      size_t len, const char *const *headers, struct exchange *x)
{
	struct buf *body = x->body;
	memset(x, 0, sizeof(*x));
	x->loop = h->loop;
	x->body = body;
	if (body)
		buf_reset(body);
	if (h->conn == NULL)
		reconnect(h);
	struct evhttp_request *req = evhttp_request_new(on_response, x);
	evhttp_request_set_error_cb(req, on_request_error);
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	evhttp_add_header(out, "Host", h->host_header);
	if (json) {
		evhttp_add_header(out, "Content-Type", "application/json");
		evbuffer_add(evhttp_request_get_output_buffer(req), json, len);
	}
	for (size_t i = 0; headers && headers[i]; i += 2)
		evhttp_add_header(out, headers[i], headers[i + 1]);
	if (evhttp_make_request(h->conn, req, cmd, target) < 0) {
		x->sys_errno = 0; /* evhttp freed req */
		return;
	}
	event_base_dispatch(h->loop);
}

/* Why an exchange got no response, for the error text. */
static void describe_failure(const struct http_client *h, const char *method, const struct exchange *x, char *out,
			     size_t outlen)
{
	static const char *const names[] = {
		[EVREQ_HTTP_TIMEOUT] = "timed out",
		[EVREQ_HTTP_EOF] = "connection closed before the response",
		[EVREQ_HTTP_INVALID_HEADER] = "invalid response header",
		[EVREQ_HTTP_BUFFER_ERROR] = "connection error",
		[EVREQ_HTTP_REQUEST_CANCEL] = "request cancelled",
		[EVREQ_HTTP_DATA_TOO_LONG] = "response too long",
	};
	const char *what = x->have_error ? names[x->error] : "cannot connect";
	/* After a failed connect evhttp has closed the socket, which leaves
	 * errno unrelated to the failure. */
	if (x->sys_errno != 0 && x->have_error && x->error != EVREQ_HTTP_TIMEOUT)
		snprintf(out, outlen, "%s to %s: %s (%s)", method, h->host_header, what, strerror(x->sys_errno));
	else
		snprintf(out, outlen, "%s to %s: %s", method, h->host_header, what);
}

/*
 * Sends method to the URL for id, with json (len bytes; NULL for no
 * body) and headers (name, value, ..., NULL; or NULL), and fills *out;
 * the whole response body goes to response unless it is NULL. A request
 * that fails with the connection closed under it (a keep-alive
 * connection the service dropped while idle) is sent once more on a
 * fresh connection: a GET or a PUT can be repeated. After no response
 * the next request starts on a fresh connection.
 */
void http_client_request(struct http_client *c, enum http_method method, const char *id, const char *json,
			 size_t len, const char *const *headers, struct buf *response, struct http_reply *out)
{
	static const char *const names[] = { [HTTP_GET] = "GET", [HTTP_PUT] = "PUT" };
	enum evhttp_cmd_type cmd = method == HTTP_GET ? EVHTTP_REQ_GET : EVHTTP_REQ_PUT;
	struct exchange x = { .body = response };
	struct buf target;
	buf_init(&target);
	request_target(c, id, &target);
	send_once(c, cmd, target.data, json, len, headers, &x);
	if (x.status == 0 && x.have_error && x.error == EVREQ_HTTP_EOF) {
		reconnect(c);
		send_once(c, cmd, target.data, json, len, headers, &x);
	}
	buf_free(&target);
	memset(out, 0, sizeof(*out));
	out->status = x.status;
	memcpy(out->excerpt, x.excerpt, sizeof(out->excerpt));
	if (x.status == 0) {
		describe_failure(c, names[method], &x, out->error, sizeof(out->error));
		reconnect(c);
	}
}

/* Delivers one user; sets its outcome. Returns whether the service
 * answered (with any status). */
static bool deliver_one(struct sink_http *h, struct delivery *d)
{
	char version[VERSION_MAX], why[160];
	const char *headers[3] = { NULL, NULL, NULL };
	bson_iter_t it;
	if (h->version_field && bson_iter_init_find(&it, d->legacy, h->version_field)) {
		if (version_text(&it, version, sizeof(version), why, sizeof(why)) < 0) {
			delivery_set(d, OUTCOME_DEAD, "mapping", "version field '%s' %s", h->version_field, why);
			return true;
		}
		headers[0] = "X-Cutover-Version";
		headers[1] = version;
	}
	size_t len;
	char *json = bson_as_relaxed_extended_json(d->doc, &len);
	if (json == NULL) {
		delivery_set(d, OUTCOME_DEAD, "mapping", "the document cannot be written as JSON (invalid UTF-8?)");
		return true;
	}
	struct http_reply x;
	http_client_request(h->client, HTTP_PUT, d->user, json, len, headers, NULL, &x);
	bson_free(json);
	if (x.status == 0) {
		delivery_set(d, OUTCOME_RETRY, NULL, "%s", x.error);
	} else if ((x.status >= 200 && x.status < 300) || x.status == 409) {
		delivery_set(d, OUTCOME_DELIVERED, NULL, "HTTP %d", x.status);
	} else if (x.status >= 400 && x.status < 500 && x.status != 408 && x.status != 429) {
		delivery_set(d, OUTCOME_DEAD, "sink-4xx", "HTTP %d: %s", x.status, x.excerpt);
	} else {
		delivery_set(d, OUTCOME_RETRY, NULL, "HTTP %d: %s", x.status, x.excerpt);
	}
	return x.status != 0;
}

static void http_deliver(struct sink *s, struct delivery *const *items, size_t n)
{
	struct sink_http *h = (struct sink_http *)s;
	int unanswered = 0;
	for (size_t i = 0; i < n; i++) {
		struct delivery *d = items[i];
		if (d->outcome != OUTCOME_NONE)
			continue;
		if (unanswered >= UNANSWERED_MAX)
			delivery_set(d, OUTCOME_DEFERRED, NULL, "not tried: %d requests in a row had no response",
				     UNANSWERED_MAX);
		else
			unanswered = deliver_one(h, d) ? 0 : unanswered + 1;
	}
}

static void http_free(struct sink *s)
{
	struct sink_http *h = (struct sink_http *)s;
	http_client_free(h->client);
	free(h);
}

/* A client of the service at url (http://host[:port]/path-with-{id}),
 * each request timing out after timeout_ms. Returns it (the caller frees
 * it with http_client_free), or NULL with err. */
struct http_client *http_client_new(const char *url, int timeout_ms, char *err, size_t errlen)
{
	struct http_client *c = xcalloc(1, sizeof(*c));
	if (parse_url(url, &c->host, &c->port, &c->path_template, err, errlen) < 0) {
		free(c);
		return NULL;
	}
	c->loop = event_base_new();
	struct buf b;
	buf_init(&b);
	buf_printf(&b, strchr(c->host, ':') ? "[%s]:%d" : "%s:%d", c->host, c->port);
	c->host_header = buf_detach(&b);
	c->timeout.tv_sec = timeout_ms / 1000;
	c->timeout.tv_usec = (timeout_ms % 1000) * 1000;
	return c;
}

void http_client_free(struct http_client *c)
{
	if (c == NULL)
		return;
	if (c->conn)
		evhttp_connection_free(c->conn);
	event_base_free(c->loop);
	free(c->host);
	free(c->host_header);
	free(c->path_template);
	free(c);
}

/* The http sink of cfg (which must outlive it). Returns it, or NULL with
 * err. */
struct sink *sink_http_new(const struct migrate_config *cfg, char *err, size_t errlen)
{
	struct http_client *client = http_client_new(cfg->sink_url, cfg->sink_timeout_ms, err, errlen);
	if (client == NULL)
		return NULL;
	struct sink_http *h = xcalloc(1, sizeof(*h));
	h->base.deliver = http_deliver;
	h->base.free = http_free;
	h->client = client;
	h->version_field = cfg->version_field;
	return &h->base;
}
