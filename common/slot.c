/*
 * slot.c - the hand-over of immutable objects between threads (see
 * common.h). The writer publishes; readers acquire a reference, or
 * refresh one they hold when the generation moved.
 */
#include "common.h"

void slot_init(struct slot *s, void *(*ref)(void *obj), void (*unref)(void *obj))
{
	pthread_mutex_init(&s->lock, NULL);
	s->current = NULL;
	atomic_init(&s->generation, 0);
	s->ref = ref;
	s->unref = unref;
}

void slot_destroy(struct slot *s)
{
	if (s->current)
		s->unref(s->current);
	s->current = NULL;
	pthread_mutex_destroy(&s->lock);
}

/* Makes obj (whose reference passes to the slot) the current object. */
void slot_publish(struct slot *s, void *obj)
{
	pthread_mutex_lock(&s->lock);
	void *old = s->current;
	s->current = obj;
	atomic_fetch_add_explicit(&s->generation, 1, memory_order_release);
	pthread_mutex_unlock(&s->lock);
	/* Released outside the lock: a big object takes a while to free. */
	if (old)
		s->unref(old);
}

/* A reference to the current object (caller unrefs), or NULL if none
 * has been published yet. */
void *slot_acquire(struct slot *s)
{
	pthread_mutex_lock(&s->lock);
	void *obj = s->current ? s->ref(s->current) : NULL;
	pthread_mutex_unlock(&s->lock);
	return obj;
}

/*
 * For readers that keep an object between uses (a proxy worker): returns
 * held if nothing was published since *seen_generation - one atomic load,
 * no lock - or else releases held and returns the current object.
 */
void *slot_refresh(struct slot *s, void *held, unsigned *seen_generation)
{
	if (atomic_load_explicit(&s->generation, memory_order_acquire) == *seen_generation)
		return held;
	pthread_mutex_lock(&s->lock);
	void *obj = s->current ? s->ref(s->current) : NULL;
	*seen_generation = atomic_load_explicit(&s->generation, memory_order_relaxed);
	pthread_mutex_unlock(&s->lock);
	if (held)
		s->unref(held);
	return obj;
}
