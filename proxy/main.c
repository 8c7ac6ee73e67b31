/*
 * main.c - cutover-proxy: start-up, signals, reloads and shutdown.
 *
 *   SIGHUP   reload the config file; a bad file is rejected with a log
 *            line and the running config keeps serving
 *   SIGTERM  drain: stop accepting, let requests in flight finish (up to
 *   SIGINT   limits.drain_timeout), exit 0
 *   SIGUSR1  reopen the access log (for logrotate)
 *
 * The main thread runs the admin listener and the flag watcher; workers
 * (worker.c) run the request path.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>

#include "config.h"
#include "proxy/core.h"

struct main_state {
	struct proxy proxy;
	const char *config_path;
	struct event_base *base;
	struct flag_watcher *watcher;
	struct event *drain_check;
	int64_t drain_deadline_us;
};

static int open_access_log(const char *where)
{
	if (strcmp(where, "off") == 0)
		return -1;
	if (strcmp(where, "stderr") == 0)
		return dup(STDERR_FILENO);
	int fd = open(where, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		log_error("cannot open access log %s: %s", where, strerror(errno));
	return fd;
}

/* Interns route labels (for metrics) once per loaded config. */
static void label_routes(struct proxy_config *cfg)
{
	for (size_t i = 0; i < cfg->nroutes; i++)
		cfg->routes[i].label = metrics_intern(cfg->routes[i].name);
}

/*
 * A reload that names another Redis (URL or prefix) gets a new flag
 * watcher for it. The flags in use stay until the new one has loaded
 * (fail-static, as on any outage); the workers move their migration
 * links when they pick the config up (worker_refresh).
 */
static void repoint_watcher(struct main_state *m, const struct proxy_config *cfg)
{
	struct proxy_config *old = config_slot_acquire(&m->proxy.config);
	bool moved = strcmp(old->redis_url, cfg->redis_url) != 0 || strcmp(old->redis_prefix, cfg->redis_prefix) != 0;
	config_unref(old);
	if (!moved)
		return;
	char err[512];
	struct flag_watcher *w =
		flag_watcher_new(m->base, cfg->redis_url, cfg->redis_prefix, &m->proxy.flags, NULL, err, sizeof(err));
	if (w == NULL) { /* the URL was checked with the file: not expected */
		log_error("reload: cannot watch the new Redis, flags still come from the old one: %s", err);
		return;
	}
	flag_watcher_free(m->watcher);
	m->watcher = w;
	log_info("reload: flags and migration now use Redis %s, prefix %s", cfg->redis_url, cfg->redis_prefix);
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
	(void)sig, (void)what;
	struct main_state *m = arg;
	struct proxy_config *cfg;
	char err[512];
	if (config_load(m->config_path, &cfg, err, sizeof(err)) < 0) {
		log_error("reload rejected, the running configuration stays: %s", err);
		return;
	}
	label_routes(cfg);
	repoint_watcher(m, cfg);
	config_slot_publish(&m->proxy.config, cfg);
	log_info("reloaded %s: %zu routes (listen and admin addresses, workers and access_log change only on restart)",
		 m->config_path, cfg->nroutes);
}

static void on_reopen(evutil_socket_t sig, short what, void *arg)
{
	(void)sig, (void)what;
	struct main_state *m = arg;
	struct proxy_config *cfg = config_slot_acquire(&m->proxy.config);
	int fd = open_access_log(cfg->access_log);
	/* dup2 over the descriptor workers write to: they never see a change. */
	if (fd >= 0 && m->proxy.access_log_fd >= 0) {
		dup2(fd, m->proxy.access_log_fd);
		close(fd);
		log_info("access log reopened");
	} else if (fd >= 0) {
		close(fd);
	}
	config_unref(cfg);
}

static void on_drain_check(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	struct main_state *m = arg;
	bool done = atomic_load(&m->proxy.workers_done) == m->proxy.nworkers;
	if (done || clock_monotonic_us() >= m->drain_deadline_us) {
		if (!done)
			log_warn("drain timeout: closing the connections still open");
		event_base_loopbreak(m->base);
	}
}

static void on_terminate(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	struct main_state *m = arg;
	if (atomic_exchange(&m->proxy.draining, true))
		return;
	struct proxy_config *cfg = config_slot_acquire(&m->proxy.config);
	log_info("signal %d: draining (up to %d ms)", (int)sig, cfg->drain_timeout_ms);
	m->drain_deadline_us = clock_monotonic_us() + (int64_t)cfg->drain_timeout_ms * 1000;
	config_unref(cfg);
	proxy_drain_workers(&m->proxy);
	struct timeval tick = { 0, 20000 };
	m->drain_check = event_new(m->base, -1, EV_PERSIST, on_drain_check, m);
	event_add(m->drain_check, &tick);
}

static void usage(FILE *out)
{
	fprintf(out, "usage: cutover-proxy -c FILE [--check-config] [--foreground] [--log-level LEVEL]\n"
		     "       cutover-proxy --version\n"
		     "\n"
		     "  -c, --config FILE     the configuration (see conf/cutover.conf)\n"
		     "  -t, --check-config    check the file and exit: 0 if good, 1 with FILE:LINE: reason\n"
		     "  -f, --foreground      accepted for compatibility: the proxy never forks; run it\n"
		     "                        under systemd (conf/cutover-proxy.service)\n"
		     "  -l, --log-level L     error, warn, info or debug (overrides the file)\n"
		     "  -V, --version         print the version\n");
}

static int run(struct main_state *m, struct proxy_config *cfg)
{
	struct proxy *p = &m->proxy;
	char err[512];
	p->started_us = clock_monotonic_us();
	p->access_log_fd = open_access_log(cfg->access_log);
	config_slot_init(&p->config);
	flag_slot_init(&p->flags);
	config_slot_publish(&p->config, config_ref(cfg));
	m->base = event_base_new();
	int rc = 1;
	struct evhttp *admin = admin_start(p, m->base, err, sizeof(err));
	if (admin == NULL) {
		log_error("%s", err);
		goto out;
	}
	m->watcher = flag_watcher_new(m->base, cfg->redis_url, cfg->redis_prefix, &p->flags, NULL, err, sizeof(err));
	if (m->watcher == NULL) {
		log_error("%s", err);
		goto out;
	}
	if (proxy_start_workers(p, err, sizeof(err)) < 0) {
		log_error("%s", err);
		goto out;
	}
	struct event *signals[] = {
		evsignal_new(m->base, SIGHUP, on_reload, m),
		evsignal_new(m->base, SIGUSR1, on_reopen, m),
		evsignal_new(m->base, SIGTERM, on_terminate, m),
		evsignal_new(m->base, SIGINT, on_terminate, m),
	};
	for (size_t i = 0; i < 4; i++)
		event_add(signals[i], NULL);
	log_info("cutover-proxy %s: %d workers, listening on %s:%d, admin on %s:%d", PACKAGE_VERSION, p->nworkers,
		 cfg->listen[0].host, cfg->listen[0].port, cfg->admin.host, cfg->admin.port);
	event_base_dispatch(m->base);
	for (size_t i = 0; i < 4; i++)
		event_free(signals[i]);
	rc = 0;
out:
	if (p->workers)
		proxy_join_workers(p);
	if (m->drain_check)
		event_free(m->drain_check);
	flag_watcher_free(m->watcher);
	if (admin)
		evhttp_free(admin);
	event_base_free(m->base);
	slot_destroy(&p->config.slot);
	flag_slot_destroy(&p->flags);
	if (p->access_log_fd >= 0)
		close(p->access_log_fd);
	if (rc == 0)
		log_info("stopped");
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },   { "check-config", no_argument, NULL, 't' },
		{ "foreground", no_argument, NULL, 'f' },     { "log-level", required_argument, NULL, 'l' },
		{ "version", no_argument, NULL, 'V' },        { "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct main_state m = { 0 };
	bool check = false;
	const char *level_text = NULL;
	int opt;
	while ((opt = getopt_long(argc, argv, "c:tfl:Vh", options, NULL)) != -1) {
		switch (opt) {
		case 'c': m.config_path = optarg; break;
		case 't': check = true; break;
		case 'f': break;
		case 'l': level_text = optarg; break;
		case 'V': printf("cutover-proxy %s\n", PACKAGE_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (m.config_path == NULL || optind != argc) {
		usage(stderr);
		return 1;
	}
	enum log_level level = LOG_LEVEL_INFO;
	if (level_text && log_level_parse(level_text, &level) < 0) {
		fprintf(stderr, "cutover-proxy: unknown log level '%s'\n", level_text);
		return 1;
	}
	struct proxy_config *cfg;
	char err[512];
	if (config_load(m.config_path, &cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "cutover-proxy: %s\n", err);
		return 1;
	}
	if (check) {
		printf("cutover-proxy: configuration file %s is OK\n", m.config_path);
		config_unref(cfg);
		return 0;
	}
	log_init("cutover-proxy", level_text ? level : cfg->log_level);
	label_routes(cfg);
	signal(SIGPIPE, SIG_IGN);
	evthread_use_pthreads();
	int rc = run(&m, cfg);
	config_unref(cfg);
	return rc;
}
