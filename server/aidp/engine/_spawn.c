/* Start a harness straight into its cgroup: one vfork and one exec, as subprocess does, with the
 * cgroup joined by the child before its exec. Python's subprocess cannot join a cgroup between
 * fork and exec without a `preexec_fn` (which forces a full fork: ~5 ms for the server), so
 * without this module every harness starts through `sh` (harness._LAUNCH), an exec more per
 * workstream. Optional: where it was not built, aidp uses the launcher (harness.NATIVE). */

#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* What the child failed at, sent with errno through the report pipe. */
enum stage { JOIN_CGROUP = 1, NEW_SESSION, SET_FDS, CHANGE_DIR, EXEC };

static const char *const stage_words[] = {
    "", "cannot join its cgroup", "cannot start a session", "cannot set up its stdio", "", "",
};

static PyObject *SetupError;  /* the child failed before its exec, not for want of its program */

struct plan {
    char *const *paths;  /* where the program may be, tried in order (the PATH search) */
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int stdin_fd, out_fd, cgroup_fd, report_fd;
    sigset_t mask;  /* the caller's own signal mask, given back to the child */
};

/* Move `fd` to `target` keeping it open across exec (dup2 onto itself would leave FD_CLOEXEC). */
static int place_fd(int fd, int target) {
    if (fd == target)
        return fcntl(fd, F_SETFD, 0);
    return dup2(fd, target) < 0 ? -1 : 0;
}

/* Everything past stdio is closed at exec; the report pipe stays usable until then. */
static void close_others_at_exec(void) {
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
        return;
    struct rlimit lim;
    long top = getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY ? (long)lim.rlim_cur : 65536;
    for (long fd = 3; fd < top; fd++)
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
}

/* The vfork child: only system calls, on the parent's memory, until exec or _exit. */
static void __attribute__((noreturn, noinline)) child(const struct plan *p) {
    enum stage stage;
    for (int sig = 1; sig < NSIG; sig++) {  /* Python's handlers live in the parent: default them */
        struct sigaction old;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &old) != 0)
            continue;
        int reset = sig == SIGPIPE || sig == SIGXFSZ ? old.sa_handler != SIG_DFL
                                                      : old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN;
        if (reset) {
            struct sigaction dfl;
            memset(&dfl, 0, sizeof dfl);
            dfl.sa_handler = SIG_DFL;
            sigaction(sig, &dfl, NULL);
        }
    }
    pthread_sigmask(SIG_SETMASK, &p->mask, NULL);
    stage = JOIN_CGROUP;
    if (p->cgroup_fd >= 0 && write(p->cgroup_fd, "0", 1) != 1)
        goto fail;
    stage = NEW_SESSION;
    if (setsid() < 0)
        goto fail;
    stage = SET_FDS;
    if (place_fd(p->stdin_fd, 0) < 0 || place_fd(p->out_fd, 1) < 0 || place_fd(p->out_fd, 2) < 0)
        goto fail;
    close_others_at_exec();
    stage = CHANGE_DIR;
    if (chdir(p->cwd) < 0)
        goto fail;
    stage = EXEC;
    int first = 0;  /* as `subprocess` says it: the first failure other than "not there" */
    for (char *const *path = p->paths; *path != NULL; path++) {
        execve(*path, p->argv, p->envp);
        if (first == 0 && errno != ENOENT && errno != ENOTDIR)
            first = errno;
    }
    if (first != 0)
        errno = first;
fail:;
    int report[2] = {(int)stage, errno};
    ssize_t ignored = write(p->report_fd, report, sizeof report);
    (void)ignored;
    _exit(127);
}

/* A NULL-ended array of the bytes in `seq`, kept alive by `*owner` (a tuple). */
static char **byte_strings(PyObject *seq, PyObject **owner) {
    PyObject *tuple = PySequence_Tuple(seq);
    if (tuple == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        Py_DECREF(tuple);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        out[i] = PyBytes_AsString(item);
        if (out[i] != NULL && strlen(out[i]) != (size_t)PyBytes_GET_SIZE(item)) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            out[i] = NULL;
        }
        if (out[i] == NULL) {
            PyMem_Free(out);
            Py_DECREF(tuple);
            return NULL;
        }
    }
    *owner = tuple;
    return out;
}

PyDoc_STRVAR(spawn_doc,
             "spawn(paths, argv, envp, cwd, stdin_fd, out_fd, cgroup_fd) -> pid\n\n"
             "Start the first of `paths` that exec takes in a new session with stdin from `stdin_fd` and stdout and stderr into `out_fd`, "
             "in the cgroup whose cgroup.procs is open as `cgroup_fd` (-1: none) before its first instruction. "
             "Every other descriptor is closed. Raises OSError (errno and what failed) when it could not start.");

static PyObject *spawn(PyObject *module, PyObject *args) {
    const char *cwd;
    PyObject *paths_seq, *argv_seq, *envp_seq, *paths_owner = NULL, *argv_owner = NULL, *envp_owner = NULL;
    struct plan p;
    if (!PyArg_ParseTuple(args, "OOOyiii", &paths_seq, &argv_seq, &envp_seq, &cwd, &p.stdin_fd, &p.out_fd,
                          &p.cgroup_fd))
        return NULL;
    char **paths = byte_strings(paths_seq, &paths_owner);
    char **argv = paths == NULL ? NULL : byte_strings(argv_seq, &argv_owner);
    char **envp = argv == NULL ? NULL : byte_strings(envp_seq, &envp_owner);
    PyObject *result = NULL;
    if (envp == NULL)
        goto done;
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    p.paths = paths, p.argv = argv, p.envp = envp, p.cwd = cwd, p.report_fd = pipe_fds[1];
    /* A descriptor among 0-2 (aidp started with its stdin closed) would be overwritten by the
     * child's stdio before it is used: the child gets copies above them. */
    int *const moved[] = {&p.stdin_fd, &p.out_fd, &p.cgroup_fd, &p.report_fd};
    int copies[4] = {-1, -1, -1, -1};
    for (int i = 0; i < 4; i++) {
        if (*moved[i] >= 0 && *moved[i] < 3) {
            copies[i] = fcntl(*moved[i], F_DUPFD_CLOEXEC, 3);
            if (copies[i] < 0) {
                PyErr_SetFromErrno(PyExc_OSError);
                for (int j = 0; j < i; j++)
                    if (copies[j] >= 0)
                        close(copies[j]);
                close(pipe_fds[0]);
                close(pipe_fds[1]);
                goto done;
            }
            *moved[i] = copies[i];
        }
    }
    pid_t pid;
    int report[2] = {0, 0}, vfork_errno = 0;
    ssize_t got = 0;
    Py_BEGIN_ALLOW_THREADS
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &p.mask);  /* no handler may run in the child on our memory */
    pid = vfork();
    if (pid == 0)
        child(&p);
    vfork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &p.mask, NULL);
    close(pipe_fds[1]);
    for (int i = 0; i < 4; i++)  /* the report pipe's write end too: its read must see the exec's EOF */
        if (copies[i] >= 0)
            close(copies[i]);
    if (pid > 0) {
        do
            got = read(pipe_fds[0], report, sizeof report);
        while (got < 0 && errno == EINTR);
        if (got > 0) {
            int status;
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        }
    }
    close(pipe_fds[0]);
    Py_END_ALLOW_THREADS
    if (pid < 0) {
        errno = vfork_errno;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (got > 0) {
        int stage = report[0] >= JOIN_CGROUP && report[0] <= EXEC ? report[0] : EXEC;
        if (stage == EXEC || stage == CHANGE_DIR) {  /* as subprocess says them: FileNotFoundError, ... */
            errno = report[1];
            PyErr_SetFromErrno(PyExc_OSError);
        } else {  /* not the program's fault: not mapped to FileNotFoundError or PermissionError */
            PyObject *exc_args = Py_BuildValue("(iN)", report[1],
                                               PyUnicode_FromFormat("%s: %s", stage_words[stage], strerror(report[1])));
            if (exc_args != NULL) {
                PyErr_SetObject(SetupError, exc_args);
                Py_DECREF(exc_args);
            }
        }
    } else {
        result = PyLong_FromLong(pid);
    }
done:
    PyMem_Free(paths);
    PyMem_Free(argv);
    PyMem_Free(envp);
    Py_XDECREF(paths_owner);
    Py_XDECREF(argv_owner);
    Py_XDECREF(envp_owner);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spawn", NULL, -1, methods};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    SetupError = PyErr_NewExceptionWithDoc("aidp.engine._spawn.SetupError",
                                           "The child failed before its exec: joining its cgroup, its session or stdio.",
                                           PyExc_OSError, NULL);
    if (SetupError == NULL || PyModule_AddObjectRef(m, "SetupError", SetupError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
