"""A FUSE filesystem for the binary-hash tests: serves the files of SOURCE, read-only, at MOUNT.

Once a file named `hang` exists in SOURCE, every read waits forever: a FUSE server that never
answers. Runs in the foreground until unmounted or killed.

usage: fuse_fs.py SOURCE MOUNT
"""

import errno
import os
import sys
import threading

from fuse import FUSE, FuseOSError, Operations


class Passthrough(Operations):
    def __init__(self, source):
        self.source = source
        self.never = threading.Event()

    def _path(self, path):
        return os.path.join(self.source, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except OSError as error:
            raise FuseOSError(error.errno)
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_atime", "st_mtime", "st_ctime")
        return {key: getattr(st, key) for key in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def open(self, path, flags):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        return os.open(self._path(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        if os.path.exists(os.path.join(self.source, "hang")):
            self.never.wait()
        # One positioned read: fusepy serves requests on several threads, and a seek then a
        # read on the shared descriptor could read at another request's offset (a torn file,
        # hashed wrong, under load).
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)


if __name__ == "__main__":
    source, mount = sys.argv[1], sys.argv[2]
    FUSE(Passthrough(source), mount, foreground=True, nothreads=False, allow_other=True,
         ro=True)
