# systemd's end of sd_notify(3) for a test: binds the unix datagram socket argv[1] (given to uid argv[2]), prints
# "<sender pid> <line>" for each line of each message, and closes the descriptors a BARRIER=1 passes (systemd-notify
# waits for that close).
import os, socket, sys

path, uid = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chown(path, uid, -1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print('0 LISTENING', flush=True)
while True:
    msg, ancillary, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(16 * 4) + socket.CMSG_SPACE(12))
    pid = 0
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for i in range(0, len(data) - len(data) % 4, 4):
                os.close(int.from_bytes(data[i:i + 4], sys.byteorder))
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = int.from_bytes(data[0:4], sys.byteorder)
    for line in msg.decode().split('\n'):
        if line:
            print(f'{pid} {line}', flush=True)
