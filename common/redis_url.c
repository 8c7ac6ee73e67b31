/*
 * redis_url.c - parses the Redis URLs operators already know:
 *
 *   redis://[[user]:password@]host[:port][/db]
 *   unix:///path/to/redis.sock[?db=N&password=P]
 *
 * User and password may be percent-encoded. TLS (rediss://) is refused
 * with a clear error: the hiredis in Debian 12 is built without it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Percent-decodes s[0..len) into a new string; NULL if malformed. */
static char *url_decode(const char *s, size_t len)
{
	char *out = xmalloc(len + 1);
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] != '%') {
			out[n++] = s[i];
			continue;
		}
		int hi = i + 2 < len ? hex_digit(s[i + 1]) : -1;
		int lo = hi >= 0 ? hex_digit(s[i + 2]) : -1;
		if (lo < 0) {
			free(out);
			return NULL;
		}
		out[n++] = (char)(hi * 16 + lo);
		i += 2;
	}
	out[n] = '\0';
	return out;
}

static int parse_unix_query(const char *q, struct redis_url *u, char *err, size_t errlen)
{
	while (*q != '\0') {
		size_t len = strcspn(q, "&");
		const char *eq = memchr(q, '=', len);
		if (eq == NULL) {
			snprintf(err, errlen, "query parameter without '=' in Redis URL");
			return -1;
		}
		size_t klen = (size_t)(eq - q), vlen = len - klen - 1;
		if (klen == 2 && memcmp(q, "db", 2) == 0) {
			if (parse_decimal(eq + 1, vlen, 0, 1000000, &u->db) < 0) {
				snprintf(err, errlen, "invalid db number in Redis URL");
				return -1;
			}
		} else if (klen == 8 && memcmp(q, "password", 8) == 0) {
			free(u->password);
			u->password = url_decode(eq + 1, vlen);
			if (u->password == NULL) {
				snprintf(err, errlen, "bad percent-encoding in Redis URL password");
				return -1;
			}
		} else {
			snprintf(err, errlen, "unknown query parameter '%.*s' in Redis URL", (int)klen, q);
			return -1;
		}
		q += len + (q[len] == '&');
	}
	return 0;
}

static int parse_userinfo(const char *s, size_t len, struct redis_url *u, char *err, size_t errlen)
{
	const char *colon = memchr(s, ':', len);
	if (colon == NULL) {
		snprintf(err, errlen, "Redis URL credentials must be [user]:password@");
		return -1;
	}
	size_t ulen = (size_t)(colon - s);
	if (ulen > 0 && (u->user = url_decode(s, ulen)) == NULL)
		goto bad;
	if ((u->password = url_decode(colon + 1, len - ulen - 1)) == NULL)
		goto bad;
	return 0;
bad:
	snprintf(err, errlen, "bad percent-encoding in Redis URL credentials");
	return -1;
}

/*
 * Parses text into *out (zeroed first). Returns 0, or -1 with err naming
 * what is wrong. On success the caller releases *out with redis_url_free;
 * on failure nothing needs releasing.
 */
int redis_url_parse(const char *text, struct redis_url *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	out->port = 6379;
	if (strncmp(text, "unix://", 7) == 0) {
		const char *path = text + 7;
		size_t plen = strcspn(path, "?");
		if (plen == 0 || path[0] != '/') {
			snprintf(err, errlen, "unix Redis URL needs an absolute path: unix:///path/to/redis.sock");
			return -1;
		}
		out->socket_path = xstrndup(path, plen);
		if (path[plen] == '?' && parse_unix_query(path + plen + 1, out, err, errlen) < 0)
			goto fail;
		return 0;
	}
	if (strncmp(text, "rediss://", 9) == 0) {
		snprintf(err, errlen, "TLS Redis URLs (rediss://) are not supported by this build");
		return -1;
	}
	if (strncmp(text, "redis://", 8) != 0) {
		snprintf(err, errlen, "Redis URL must start with redis:// or unix://");
		return -1;
	}
	const char *p = text + 8;
	size_t auth_len = strcspn(p, "@/");
	if (p[auth_len] == '@') {
		if (parse_userinfo(p, auth_len, out, err, errlen) < 0)
			goto fail;
		p += auth_len + 1;
	}
	size_t hostport = strcspn(p, "/");
	const char *colon = memchr(p, ':', hostport);
	size_t hlen = colon ? (size_t)(colon - p) : hostport;
	if (hlen == 0) {
		snprintf(err, errlen, "Redis URL has no host");
		goto fail;
	}
	out->host = xstrndup(p, hlen);
	if (colon && parse_decimal(colon + 1, hostport - hlen - 1, 1, 65535, &out->port) < 0) {
		snprintf(err, errlen, "invalid port in Redis URL");
		goto fail;
	}
	p += hostport;
	if (*p == '/' && p[1] != '\0' && parse_decimal(p + 1, strlen(p + 1), 0, 1000000, &out->db) < 0) {
		snprintf(err, errlen, "invalid db number '%s' in Redis URL", p + 1);
		goto fail;
	}
	return 0;
fail:
	redis_url_free(out);
	return -1;
}

void redis_url_free(struct redis_url *u)
{
	free(u->host);
	free(u->socket_path);
	free(u->user);
	free(u->password);
	memset(u, 0, sizeof(*u));
}

/* A printable form without the password, for error messages. */
const char *redis_url_describe(const struct redis_url *u, char *out, size_t outlen)
{
	if (u->socket_path)
		snprintf(out, outlen, "unix://%s?db=%d", u->socket_path, u->db);
	else
		snprintf(out, outlen, "redis://%s%s%s:%d/%d", u->user ? u->user : "",
			 u->user || u->password ? ":***@" : "", u->host, u->port, u->db);
	return out;
}
