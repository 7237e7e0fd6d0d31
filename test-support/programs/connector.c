/* A process the enforcement tests drive, one command per line on stdin, one answer per line on
 * stdout (unbuffered: fd 0 is read byte by byte, so nothing is lost across an exec):
 *
 *   tcp ADDR PORT    connect(); answers ok, EPERM, or ERR <errno>
 *   udp ADDR PORT    sendto() one datagram; same answers
 *   fork CMD...      a child runs CMD (tcp/udp) and answers; the parent waits for it
 *   exec             execs this program again (a new image of the same process): answers ready
 *   run PATH ARGS... execs PATH with ARGS (another program, in the same process)
 *   leaderexit       the main thread starts a worker that goes on reading commands, then calls
 *                    pthread_exit: the process lives on without its leader; answers threaded
 *   quit             exits
 *
 * Arguments, if any, are one command run at start, before the first "ready <pid>" line: the
 * first thing the process does. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static char self_path[4096];

static void say(const char *text)
{
	size_t length = strlen(text);
	if (write(1, text, length) != (ssize_t)length || write(1, "\n", 1) != 1)
		exit(3);
}

static int read_line(char *line, size_t size)
{
	size_t used = 0;
	while (used + 1 < size) {
		char c;
		ssize_t got = read(0, &c, 1);
		if (got <= 0)
			return -1;
		if (c == '\n')
			break;
		line[used++] = c;
	}
	line[used] = 0;
	return 0;
}

static void answer_errno(int result)
{
	char text[64];
	if (result == 0)
		say("ok");
	else if (errno == EPERM)
		say("EPERM");
	else {
		snprintf(text, sizeof(text), "ERR %d", errno);
		say(text);
	}
}

/* tcp|udp ADDR PORT */
static void reach(const char *kind, const char *address, int port)
{
	struct sockaddr_storage storage;
	socklen_t length;
	memset(&storage, 0, sizeof(storage));
	struct sockaddr_in *v4 = (struct sockaddr_in *)&storage;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&storage;
	int family;
	if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
		family = AF_INET;
		v4->sin_family = AF_INET;
		v4->sin_port = htons(port);
		length = sizeof(*v4);
	} else if (inet_pton(AF_INET6, address, &v6->sin6_addr) == 1) {
		family = AF_INET6;
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(port);
		length = sizeof(*v6);
	} else {
		say("ERR bad address");
		return;
	}
	int udp = strcmp(kind, "udp") == 0;
	int fd = socket(family, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
	if (fd < 0) {
		answer_errno(-1);
		return;
	}
	int result;
	if (udp)
		result = sendto(fd, "x", 1, 0, (struct sockaddr *)&storage, length) == 1 ? 0 : -1;
	else
		result = connect(fd, (struct sockaddr *)&storage, length);
	int saved = errno;
	close(fd);
	errno = saved;
	answer_errno(result);
}

static int run(char *line);

static void *worker(void *unused)
{
	(void)unused;
	say("threaded");
	char line[512];
	while (read_line(line, sizeof(line)) == 0)
		if (run(line))
			break;
	exit(0);
	return 0;
}

/* Runs one command; returns 1 to stop. */
static int run(char *line)
{
	char kind[16], address[128];
	int port;
	if (sscanf(line, "%15s %127s %d", kind, address, &port) == 3 &&
	    (strcmp(kind, "tcp") == 0 || strcmp(kind, "udp") == 0)) {
		reach(kind, address, port);
	} else if (strncmp(line, "fork ", 5) == 0) {
		pid_t child = fork();
		if (child == 0) {
			run(line + 5);
			_exit(0);
		}
		waitpid(child, 0, 0);
	} else if (strcmp(line, "exec") == 0) {
		char *argv[] = {self_path, 0};
		execv(self_path, argv);
		say("ERR exec");
	} else if (strncmp(line, "run ", 4) == 0) {
		char *argv[16];
		int argc = 0;
		for (char *word = strtok(line + 4, " "); word && argc < 15; word = strtok(0, " "))
			argv[argc++] = word;
		argv[argc] = 0;
		if (argc > 0)
			execv(argv[0], argv);
		say("ERR exec");
	} else if (strcmp(line, "leaderexit") == 0) {
		pthread_t thread;
		if (pthread_create(&thread, 0, worker, 0) != 0) {
			say("ERR thread");
			return 0;
		}
		pthread_exit(0);
	} else if (strcmp(line, "quit") == 0) {
		return 1;
	} else {
		say("ERR unknown command");
	}
	return 0;
}

int main(int argc, char **argv)
{
	ssize_t length = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
	if (length <= 0)
		return 2;
	self_path[length] = 0;
	if (argc > 1) {
		char first[512] = "";
		for (int i = 1; i < argc; i++) {
			strncat(first, argv[i], sizeof(first) - strlen(first) - 2);
			strcat(first, " ");
		}
		run(first);
	}
	char ready[64];
	snprintf(ready, sizeof(ready), "ready %d", getpid());
	say(ready);
	char line[512];
	while (read_line(line, sizeof(line)) == 0)
		if (run(line))
			break;
	return 0;
}
