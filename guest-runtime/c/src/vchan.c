/* A driver for the virtio channel device (docs/ABI.md, "Virtio channel
 * device"): virtio-mmio version 2 at XOS_VIRTIO_MMIO, two split
 * virtqueues in this guest's memory, queue 0 to send, queue 1 to receive.
 *
 * Set-up costs ~30 exits (each register access is one); afterwards a
 * message costs none while the device thread polls (it sets
 * VRING_USED_F_NO_NOTIFY), one QueueNotify write when it sleeps. No
 * interrupts: the driver polls its used rings, and now and then reads the
 * config space to learn whether the host end is gone. */
#include <string.h>
#include <xos_guest.h>

#define MAGIC 0x74726976u
#define DEVICE_ID 0xfff1u
#define QSIZE 8u
#define SLOT 65536u
#define TOO_LARGE 0xffffffffu

#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEVICE_FEATURES 0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_STATUS 0x070
#define R_QUEUE_DESC_LOW 0x080
#define R_QUEUE_DESC_HIGH 0x084
#define R_QUEUE_DRIVER_LOW 0x090
#define R_QUEUE_DRIVER_HIGH 0x094
#define R_QUEUE_DEVICE_LOW 0x0a0
#define R_QUEUE_DEVICE_HIGH 0x0a4
#define R_PEER_GONE 0x100
#define R_WAIT 0x108

#define S_ACKNOWLEDGE 1u
#define S_DRIVER 2u
#define S_DRIVER_OK 4u
#define S_FEATURES_OK 8u
#define S_NEEDS_RESET 0x40u

#define F_WRITE 2u
#define USED_F_NO_NOTIFY 1u

/* Spins before the driver sleeps in the monitor (a WAIT read, one exit):
 * a spinning vCPU would take the CPU the device thread and the peer need. */
#define SPIN_BEFORE_WAIT (1u << 11)

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[QSIZE];
    uint16_t used_event;
};

struct used_elem {
    uint32_t id;
    uint32_t len;
};

struct used {
    uint16_t flags;
    uint16_t idx;
    struct used_elem ring[QSIZE];
    uint16_t avail_event;
};

struct vq {
    struct desc desc[QSIZE] __attribute__((aligned(16)));
    struct avail avail __attribute__((aligned(2)));
    struct used used __attribute__((aligned(4)));
    uint16_t next;      /* our next avail index */
    uint16_t last_used; /* used entries consumed */
};

static struct vq txq, rxq;
static unsigned char txbuf[QSIZE][SLOT];
static unsigned char rxbuf[QSIZE][SLOT];
static int state; /* 0 not probed, 1 usable, -1 not usable */

static uint32_t rd(uint32_t off)
{
    return *(volatile uint32_t *)(uintptr_t)(XOS_VIRTIO_MMIO + off);
}

static void wr(uint32_t off, uint32_t v)
{
    *(volatile uint32_t *)(uintptr_t)(XOS_VIRTIO_MMIO + off) = v;
}

static uint16_t load16(const uint16_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void setup_queue(uint32_t index, struct vq *q)
{
    wr(R_QUEUE_SEL, index);
    wr(R_QUEUE_NUM, QSIZE);
    uint64_t d = (uintptr_t)q->desc, a = (uintptr_t)&q->avail,
             u = (uintptr_t)&q->used;
    wr(R_QUEUE_DESC_LOW, (uint32_t)d);
    wr(R_QUEUE_DESC_HIGH, (uint32_t)(d >> 32));
    wr(R_QUEUE_DRIVER_LOW, (uint32_t)a);
    wr(R_QUEUE_DRIVER_HIGH, (uint32_t)(a >> 32));
    wr(R_QUEUE_DEVICE_LOW, (uint32_t)u);
    wr(R_QUEUE_DEVICE_HIGH, (uint32_t)(u >> 32));
    wr(R_QUEUE_READY, 1);
}

int xos_vchan_available(void)
{
    if (state)
        return state > 0;
    state = -1;
    if (!(xos_boot_info()->devices & XOS_DEVICE_VIRTIO_CHANNEL))
        return 0;
    if (rd(R_MAGIC) != MAGIC || rd(R_VERSION) != 2 ||
        rd(R_DEVICE_ID) != DEVICE_ID || rd(R_QUEUE_NUM_MAX) < QSIZE)
        return 0;
    wr(R_STATUS, 0);
    wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(R_DEVICE_FEATURES_SEL, 1);
    if (!(rd(R_DEVICE_FEATURES) & 1)) /* VIRTIO_F_VERSION_1 */
        return 0;
    wr(R_DRIVER_FEATURES_SEL, 1);
    wr(R_DRIVER_FEATURES, 1);
    wr(R_DRIVER_FEATURES_SEL, 0);
    wr(R_DRIVER_FEATURES, 0);
    wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    setup_queue(0, &txq);
    setup_queue(1, &rxq);
    /* Offer every receive buffer. */
    for (uint16_t i = 0; i < QSIZE; i++) {
        rxq.desc[i].addr = (uintptr_t)rxbuf[i];
        rxq.desc[i].len = SLOT;
        rxq.desc[i].flags = F_WRITE;
        rxq.avail.ring[i] = i;
    }
    rxq.next = QSIZE;
    __atomic_store_n(&rxq.avail.idx, rxq.next, __ATOMIC_RELEASE);
    wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    if (rd(R_STATUS) & S_NEEDS_RESET)
        return 0;
    state = 1;
    return 1;
}

static void notify(struct vq *q, uint32_t index)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!(load16(&q->used.flags) & USED_F_NO_NOTIFY))
        wr(R_QUEUE_NOTIFY, index);
}

/* Waits until the device used another entry of `q`. 0, XOS_EPIPE when
 * the host end is gone, XOS_EIO when the device stopped serving us. */
static long wait_used(struct vq *q)
{
    uint32_t spins = 0;
    while (load16(&q->used.idx) == q->last_used) {
        if (++spins < SPIN_BEFORE_WAIT) {
            __builtin_ia32_pause();
            continue;
        }
        spins = 0;
        /* Tell the device what we have seen of this queue (and that the
         * other one is of no interest now), then sleep in the monitor
         * until it uses more (or 1 ms passes). */
        struct vq *other = q == &rxq ? &txq : &rxq;
        q->avail.used_event = q->last_used;
        other->avail.used_event = load16(&other->used.idx);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        (void)rd(R_WAIT);
        if (load16(&q->used.idx) != q->last_used)
            break;
        if (rd(R_STATUS) & S_NEEDS_RESET)
            return XOS_EIO;
        if (q == &rxq && rd(R_PEER_GONE) &&
            load16(&q->used.idx) == q->last_used)
            return XOS_EPIPE;
    }
    return 0;
}

long xos_vchan_send(const void *msg, size_t len)
{
    if (!xos_vchan_available())
        return XOS_EINVAL;
    if (len > SLOT)
        return XOS_E2BIG;
    /* Reclaim transmitted buffers until a slot is free. */
    while ((uint16_t)(txq.next - txq.last_used) >= QSIZE) {
        long r = wait_used(&txq);
        if (r < 0)
            return r;
        txq.last_used = load16(&txq.used.idx);
    }
    txq.last_used = load16(&txq.used.idx);
    uint16_t slot = txq.next % QSIZE;
    memcpy(txbuf[slot], msg, len);
    txq.desc[slot].addr = (uintptr_t)txbuf[slot];
    txq.desc[slot].len = (uint32_t)len;
    txq.desc[slot].flags = 0;
    txq.avail.ring[txq.next % QSIZE] = slot;
    txq.next++;
    __atomic_store_n(&txq.avail.idx, txq.next, __ATOMIC_RELEASE);
    notify(&txq, 0);
    return 0;
}

long xos_vchan_recv(void *buf, size_t cap)
{
    if (!xos_vchan_available())
        return XOS_EINVAL;
    long r = wait_used(&rxq);
    if (r < 0)
        return r;
    struct used_elem e = rxq.used.ring[rxq.last_used % QSIZE];
    rxq.last_used++;
    if (e.id >= QSIZE)
        return XOS_EIO;
    long n;
    if (e.len == TOO_LARGE || e.len > cap)
        n = XOS_E2BIG; /* consumed */
    else if (e.len > SLOT)
        n = XOS_EIO;
    else {
        memcpy(buf, rxbuf[e.id], e.len);
        n = (long)e.len;
    }
    /* Offer the buffer again. */
    rxq.desc[e.id].addr = (uintptr_t)rxbuf[e.id];
    rxq.desc[e.id].len = SLOT;
    rxq.desc[e.id].flags = F_WRITE;
    rxq.avail.ring[rxq.next % QSIZE] = (uint16_t)e.id;
    rxq.next++;
    __atomic_store_n(&rxq.avail.idx, rxq.next, __ATOMIC_RELEASE);
    notify(&rxq, 1);
    return n;
}

long xos_vchan_call(const void *request, size_t len, void *reply, size_t cap)
{
    long r = xos_vchan_send(request, len);
    return r < 0 ? r : xos_vchan_recv(reply, cap);
}
