// chain_probe: a pool's life reduced to its hand-offs, in plain C, beside busy loops.
//
// What it answers (docs/DESIGN.md, *What no design here removes*): which shapes of a pool's
// life lose a scheduler tick beside one busy loop per CPU, whatever the pool's own code does.
// A "life" is what W6 and W8d time: helpers start, two workers say they are ready, one task
// goes to a worker and back, the workers are told to end, they exit, the server reaps and
// reports them and exits, the caller reaps the server. No serialization, no spins, no
// library: only the processes, threads and pipes.
//
//   gcc -O2 -pthread tools/chain_probe.c -o /tmp/chain_probe
//   /tmp/chain_probe --busy 2                      # forkpool's shape: forks in the life
//   /tmp/chain_probe --busy 2 --spare --gap 5000   # helpers forked 5 ms before the life
//   /tmp/chain_probe --busy 2 --spare --gap 5000 --no-thread
//
// Options:
//   --lives N        lives to time (default 60)
//   --busy K         K busy-loop processes beside the lives (default 0); they die with this
//                    process (PR_SET_PDEATHSIG) and by their own alarm after 120 s
//   --spare          the server and its two workers are forked before the life starts (a
//                    zygote's spare set); without it they are forked at the life's start
//   --gap US         sleep US µs before each life (not timed): how long a spare set sleeps
//   --refill-early   make the next spare set as soon as the life has taken this one, on a
//                    helper thread that exists from the start (a zygote refilling at once)
//   --no-thread      the caller does the dispatcher's part itself; otherwise each life
//                    starts a dispatcher thread, as every forkpool pool does
//   --slice US       every thread and process asks for this EEVDF slice (sched_setattr's
//                    sched_runtime, Linux 6.12+); default: the kernel's
//
// It prints the median life and how many lives took under 3 ms and over 6 ms (beside busy
// loops at HZ=250: no tick lost, two or more lost).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int slice_us;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void die(const char *what) {
    perror(what);
    _exit(2);
}

static void put(int fd, char c) {
    if (write(fd, &c, 1) != 1) die("write");
}

// The byte read, or 0 at end of file.
static char get(int fd) {
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) < 0) {
        if (errno == EINTR) continue;
        die("read");
    }
    return n == 1 ? c : 0;
}

static void pipe_or_die(int fds[2]) {
    if (pipe(fds) != 0) die("pipe");
}

// sched_setattr's sched_runtime on SCHED_OTHER is the thread's EEVDF slice (Linux 6.12+).
static void ask_slice(void) {
    struct {
        uint32_t size, policy;
        uint64_t flags;
        int32_t nice;
        uint32_t priority;
        uint64_t runtime, deadline, period;
        uint32_t util_min, util_max;
    } attr;
    if (slice_us == 0) return;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.runtime = (uint64_t)slice_us * 1000;
    syscall(SYS_sched_setattr, 0, &attr, 0);
}

// Closes descriptors first..last; by hand where close_range (Linux 5.9) is missing.
static void close_from_to(unsigned first, unsigned last) {
    if (syscall(SYS_close_range, first, last, 0) == 0) return;
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = first; fd <= (long)last && fd < max; fd++) close((int)fd);
}

// Keeps descriptors 100.. (renumbered from `keep`) and closes every other one above stderr.
static void keep_only(const int *keep, int n) {
    for (int i = 0; i < n; i++)
        if (dup2(keep[i], 100 + i) < 0) die("dup2");
    close_from_to(3, 99);
    close_from_to(100 + n, ~0U);
}

// A worker: waits to be told the pool is built, says it is ready, answers tasks until end
// of file, exits.
static void worker(int go, int task, int reply) {
    int keep[] = {go, task, reply};
    keep_only(keep, 3);
    if (get(100) == 0) _exit(0);  // a spare set never used
    put(102, 'R');
    for (char c; (c = get(101)) != 0;) put(102, (char)(c + 1));
    _exit(0);
}

// A server and its two workers, as the parent sees them.
struct helpers {
    pid_t server;
    int start;      // write 'S': the pool is built
    int reports;    // the server's reports: one byte per reaped worker, then end of file
    int task[2];    // to each worker
    int reply[2];   // from each worker
};

// Forks a server, which forks two workers and waits: on 'S' it tells them the pool is built,
// then reaps them, reporting each, and exits.
static struct helpers fork_helpers(void) {
    int start[2], reports[2], go[2][2], task[2][2], reply[2][2];
    pipe_or_die(start);
    pipe_or_die(reports);
    for (int i = 0; i < 2; i++) {
        pipe_or_die(go[i]);
        pipe_or_die(task[i]);
        pipe_or_die(reply[i]);
    }
    pid_t server = fork();
    if (server < 0) die("fork");
    if (server == 0) {
        ask_slice();
        for (int i = 0; i < 2; i++) {
            pid_t w = fork();
            if (w < 0) die("fork");
            if (w == 0) worker(go[i][0], task[i][0], reply[i][1]);
        }
        int keep[] = {start[0], reports[1], go[0][1], go[1][1]};
        keep_only(keep, 4);
        int used = get(100) != 0;
        if (used) {
            put(102, 'g');
            put(103, 'g');
        } else {
            close(102);
            close(103);
        }
        for (int i = 0; i < 2; i++) {
            if (wait(NULL) < 0) die("wait");
            if (used) put(101, 'E');
        }
        _exit(0);
    }
    struct helpers h = {.server = server, .start = start[1], .reports = reports[0]};
    close(start[0]);
    close(reports[1]);
    for (int i = 0; i < 2; i++) {
        close(go[i][0]);
        close(go[i][1]);
        close(task[i][0]);
        close(reply[i][1]);
        h.task[i] = task[i][1];
        h.reply[i] = reply[i][0];
    }
    return h;
}

// The dispatcher's part of a life, from the pool's start to the server reaped.
static void dispatch(const struct helpers *h, int to_caller, int from_caller) {
    for (int i = 0; i < 2; i++)
        if (get(h->reply[i]) != 'R') die("ready");
    if (to_caller >= 0) put(to_caller, 'r');
    char task = to_caller >= 0 ? get(from_caller) : 5;
    put(h->task[0], task);
    char answer = get(h->reply[0]);
    if (to_caller >= 0) {
        put(to_caller, answer);
        get(from_caller);  // close
    } else if (answer != 6) {
        die("answer");
    }
    close(h->task[0]);
    close(h->task[1]);
    while (get(h->reports) != 0) {
    }
    if (waitpid(h->server, NULL, 0) < 0) die("waitpid");
    close(h->start);
    close(h->reports);
    close(h->reply[0]);
    close(h->reply[1]);
}

struct life {
    struct helpers h;
    int handed[2];  // the caller gives the thread its helpers
    int to_caller[2];
    int from_caller[2];
};

static void *dispatcher_thread(void *arg) {
    struct life *l = arg;
    ask_slice();
    get(l->handed[0]);
    dispatch(&l->h, l->to_caller[1], l->from_caller[0]);
    return NULL;
}

// The early refill: a thread that exists from the start and makes the next spare set when
// asked.
static int refill_ask[2], refill_done[2];
static struct helpers refilled;

static void *refill_thread(void *arg) {
    (void)arg;
    ask_slice();
    while (get(refill_ask[0]) != 0) {
        refilled = fork_helpers();
        put(refill_done[1], 'd');
    }
    return NULL;
}

static void start_busy_loops(int k) {
    for (int i = 0; i < k; i++) {
        pid_t p = fork();
        if (p < 0) die("fork");
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            alarm(120);
            for (volatile unsigned long x = 0;; x++) {
            }
        }
    }
    usleep(300000);  // let them take their CPUs
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int lives = 60, busy = 0, spare = 0, gap_us = 0, early = 0, thread = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : "0";
        if (!strcmp(a, "--lives")) lives = atoi(v), i++;
        else if (!strcmp(a, "--busy")) busy = atoi(v), i++;
        else if (!strcmp(a, "--gap")) gap_us = atoi(v), i++;
        else if (!strcmp(a, "--slice")) slice_us = atoi(v), i++;
        else if (!strcmp(a, "--spare")) spare = 1;
        else if (!strcmp(a, "--refill-early")) early = spare = 1;
        else if (!strcmp(a, "--no-thread")) thread = 0;
        else {
            fprintf(stderr, "chain_probe: unknown option %s (see the file's head)\n", a);
            return 2;
        }
    }
    if (lives < 1) lives = 1;
    signal(SIGPIPE, SIG_IGN);
    start_busy_loops(busy);
    ask_slice();
    double *ms = calloc((size_t)lives, sizeof *ms);
    if (!ms) die("calloc");
    if (early) {
        pipe_or_die(refill_ask);
        pipe_or_die(refill_done);
        pthread_t t;
        if (pthread_create(&t, NULL, refill_thread, NULL) != 0) die("pthread_create");
    }
    struct helpers next;
    if (spare) next = fork_helpers();
    for (int k = 0; k < lives; k++) {
        if (gap_us) usleep((useconds_t)gap_us);
        double t0 = now_ms();
        struct life l;
        pthread_t d;
        if (thread) {
            pipe_or_die(l.handed);
            pipe_or_die(l.to_caller);
            pipe_or_die(l.from_caller);
            if (pthread_create(&d, NULL, dispatcher_thread, &l) != 0) die("pthread_create");
        }
        l.h = spare ? next : fork_helpers();
        put(l.h.start, 'S');
        if (early) put(refill_ask[1], 'a');
        if (thread) {
            put(l.handed[1], 'h');
            get(l.to_caller[0]);  // the pool is built
            put(l.from_caller[1], 5);
            if (get(l.to_caller[0]) != 6) die("answer");
            put(l.from_caller[1], 'c');
            pthread_join(d, NULL);
        } else {
            dispatch(&l.h, -1, -1);
        }
        ms[k] = now_ms() - t0;
        if (thread) {
            int *fds[] = {l.handed, l.to_caller, l.from_caller};
            for (int i = 0; i < 3; i++) close(fds[i][0]), close(fds[i][1]);
        }
        if (early) {
            get(refill_done[0]);
            next = refilled;
        } else if (spare) {
            next = fork_helpers();
        }
    }
    if (spare) {
        // The spare set left over: its server ends it at end of file.
        close(next.start);
        if (waitpid(next.server, NULL, 0) < 0) die("waitpid");
    }
    int under3 = 0, over6 = 0;
    for (int k = 0; k < lives; k++) under3 += ms[k] < 3, over6 += ms[k] > 6;
    qsort(ms, (size_t)lives, sizeof *ms, by_value);
    printf("median %.3f ms; under 3 ms %d, over 6 ms %d, of %d lives\n", ms[lives / 2], under3,
           over6, lives);
    return 0;
}
