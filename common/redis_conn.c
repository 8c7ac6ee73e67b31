/*
 * redis_conn.c - opens Redis connections from a parsed URL and
 * authenticates and selects the database, so callers start with a
 * connection that is ready for their commands.
 */
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "common.h"

/* The context's error, saying "timed out" where hiredis passes on the
 * EAGAIN of a socket timeout as "Resource temporarily unavailable". */
const char *redis_error_text(const redisContext *c)
{
	if (c->err == REDIS_ERR_IO && strstr(c->errstr, "temporarily unavailable") != NULL)
		return "timed out";
	return c->errstr[0] ? c->errstr : "connection lost";
}

/* Sends AUTH and SELECT over a connected synchronous context. */
static int redis_handshake(redisContext *c, const struct redis_url *u, char *err, size_t errlen)
{
	redisReply *r = NULL;
	if (u->password) {
		r = u->user ? redisCommand(c, "AUTH %s %s", u->user, u->password)
			    : redisCommand(c, "AUTH %s", u->password);
		if (r == NULL || r->type == REDIS_REPLY_ERROR)
			goto fail;
		freeReplyObject(r);
	}
	if (u->db != 0) {
		r = redisCommand(c, "SELECT %d", u->db);
		if (r == NULL || r->type == REDIS_REPLY_ERROR)
			goto fail;
		freeReplyObject(r);
	}
	if (u->password == NULL && u->db == 0) {
		/* Nothing was sent yet: a server that wants a password must
		 * say so now, as a failure to connect, not on a later command. */
		r = redisCommand(c, "PING");
		if (r == NULL || r->type == REDIS_REPLY_ERROR)
			goto fail;
		freeReplyObject(r);
	}
	return 0;
fail:
	snprintf(err, errlen, "%s", r ? r->str : redis_error_text(c));
	if (r)
		freeReplyObject(r);
	return -1;
}

/*
 * Connects with a deadline of timeout_ms for the connect and for each
 * later command. Returns a ready context (caller redisFree()s it), or
 * NULL with the reason in err.
 */
redisContext *redis_connect(const struct redis_url *u, int timeout_ms, char *err, size_t errlen)
{
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	redisContext *c = u->socket_path ? redisConnectUnixWithTimeout(u->socket_path, tv)
					 : redisConnectWithTimeout(u->host, u->port, tv);
	if (c == NULL) {
		snprintf(err, errlen, "cannot allocate a Redis context");
		return NULL;
	}
	if (c->err) {
		snprintf(err, errlen, "%s", redis_error_text(c));
		goto fail;
	}
	if (redisSetTimeout(c, tv) != REDIS_OK || redisEnableKeepAlive(c) != REDIS_OK) {
		snprintf(err, errlen, "cannot set the Redis timeout: %s", c->errstr);
		goto fail;
	}
	if (redis_handshake(c, u, err, errlen) < 0)
		goto fail;
	return c;
fail:
	redisFree(c);
	return NULL;
}

/* Detaches *slot from its owner and frees it (deferred by hiredis when
 * called from one of its callbacks). data is cleared first, so callbacks
 * hiredis runs during the teardown find no owner and do nothing. */
void redis_async_drop(redisAsyncContext **slot)
{
	redisAsyncContext *ac = *slot;
	*slot = NULL;
	if (ac != NULL) {
		ac->data = NULL;
		redisAsyncFree(ac);
	}
}

/* A failed AUTH or SELECT makes the connection useless: drop it, and let
 * the owner's disconnect callback decide when to retry. */
static void redis_async_handshake_reply(redisAsyncContext *ac, void *reply, void *what)
{
	redisReply *r = reply;
	if (r != NULL && r->type == REDIS_REPLY_ERROR) {
		log_warn("redis %s failed: %s", (const char *)what, r->str);
		redisAsyncDisconnect(ac);
	}
}

/*
 * Starts a non-blocking connection on base and queues AUTH and SELECT
 * ahead of anything the caller sends. Returns the context (freed by
 * hiredis after disconnect), or NULL with the reason in err. hiredis
 * 0.14 has no connect timeout: the caller must arm its own.
 */
redisAsyncContext *redis_connect_async(const struct redis_url *u, struct event_base *base, char *err,
				       size_t errlen)
{
	redisAsyncContext *ac = u->socket_path ? redisAsyncConnectUnix(u->socket_path)
					       : redisAsyncConnect(u->host, u->port);
	if (ac == NULL) {
		snprintf(err, errlen, "cannot allocate a Redis context");
		return NULL;
	}
	if (ac->err) {
		snprintf(err, errlen, "%s", ac->errstr);
		redisAsyncFree(ac);
		return NULL;
	}
	redisLibeventAttach(ac, base);
	redisEnableKeepAlive(&ac->c);
	if (u->password) {
		if (u->user)
			redisAsyncCommand(ac, redis_async_handshake_reply, "AUTH", "AUTH %s %s", u->user,
					  u->password);
		else
			redisAsyncCommand(ac, redis_async_handshake_reply, "AUTH", "AUTH %s", u->password);
	}
	if (u->db != 0)
		redisAsyncCommand(ac, redis_async_handshake_reply, "SELECT", "SELECT %d", u->db);
	return ac;
}
