# Writes the seed inputs of fuzz/corpus/ (run from the repo root: python3 fuzz/make_seeds.py fuzz/corpus).
# The seeds are committed; cargo fuzz adds what it finds beside them.
import base64, hashlib, os, struct, subprocess, sys
root = sys.argv[1]
def put(target, name, data):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, 'seed-' + name), 'wb').write(data if isinstance(data, bytes) else data.encode())

H = hashlib.sha256(b'123').hexdigest()
names = {
 'read': f'blobs/{H}/3', 'read-inst': f'main/ci/blobs/{H}/3', 'read-zstd': f'i/compressed-blobs/zstd/{H}/3',
 'read-blake3': f'blobs/blake3/{H}/3', 'write': f'i/uploads/2f1c9b1e-4d6a-4c1b-9f7e-0a1b2c3d4e5f/blobs/{H}/3',
 'write-meta': f'uploads/u/compressed-blobs/zstd/blake3/{H}/3/some/meta', 'dotdot': f'uploads/../blobs/{H}/3',
 'caps': f'capabilities/blobs/{H}/3', 'long-inst': 'i' * 256 + f'/blobs/{H}/3', 'digest': f'{H}/3',
 'neg': f'blobs/{H}/-1', 'empty-id': f'uploads//blobs/{H}/3',
}
for k, v in names.items(): put('resource_name', k, v)

def zin(declared, chunk, data): return struct.pack('<I', declared)[:3] + bytes([chunk]) + data
def raw_frame(wlog, content):
    return b'\x28\xb5\x2f\xfd\x00' + bytes([(wlog - 10) << 3]) + struct.pack('<I', (len(content) << 3) | 1)[:3] + content
def rle(blocks):
    f = b'\x28\xb5\x2f\xfd\x00' + bytes([7 << 3])
    for i in range(blocks): f += struct.pack('<I', ((128 << 10) << 3) | 2 | (i + 1 == blocks))[:3] + b'\0'
    return f
text = b''.join(b'line %d of some build output\n' % i for i in range(3000))
for lvl in (1, 3, 19):
    z = subprocess.run(['zstd', '-q', '-c', f'-{lvl}'], input=text, capture_output=True).stdout
    put('zstd_decode', f'level{lvl}', zin(len(text), 97, z))
z = subprocess.run(['zstd', '-q', '-c', '--no-check'], input=b'hello', capture_output=True).stdout
put('zstd_decode', 'hello', zin(5, 1, z + z))  # two frames, 10 bytes: size mismatch
put('zstd_decode', 'hello-exact', zin(5, 3, z))
put('zstd_decode', 'raw-window27', zin(5, 255, raw_frame(27, b'hello')))
put('zstd_decode', 'raw-window23', zin(5, 255, raw_frame(23, b'hello')))
put('zstd_decode', 'rle-bomb', zin(100, 16, rle(64)))
# Regression: output that exactly fills the decoder's 64 KiB buffer at the end
# of a frame was refused as "ends in the middle of a frame" (found by a unit test).
whole = bytes(i % 7 for i in range(64 << 10))
put('zstd_decode', 'regress-whole-chunk', zin(len(whole), 255, subprocess.run(['zstd', '-q', '-c', '-1'], input=whole, capture_output=True).stdout))
put('zstd_decode', 'skippable', zin(0, 8, b'\x50\x2a\x4d\x18' + struct.pack('<I', 4) + b'abcd'))

def varint(n):
    out = b''
    while True:
        b = n & 0x7f; n >>= 7
        if n: out += bytes([b | 0x80])
        else: return out + bytes([b])
def fld(num, data): return varint(num << 3 | 2) + varint(len(data)) + data
def vfld(num, v): return varint(num << 3) + varint(v)
def digest(data): return fld(1, hashlib.sha256(data).hexdigest().encode()) + vfld(2, len(data))
outfile = fld(1, b'out/a.o') + fld(2, digest(b'a'))
outdir = fld(1, b'out/dir') + fld(3, digest(b'tree')) + fld(5, digest(b'root'))
result = fld(2, outfile) + fld(3, outdir) + fld(6, digest(b'stdout')) + fld(8, digest(b'stderr'))
put('action_result_refs', 'result', result)
put('action_result_refs', 'result-dir-only', fld(3, fld(1, b'd') + fld(5, digest(b'r'))))
put('action_result_refs', 'result-bad-digest', fld(3, fld(1, b'd') + fld(3, fld(1, b'xyz') + vfld(2, 3))))
filenode = fld(1, b'f') + fld(2, digest(b'file'))
dirnode = fld(1, b'sub') + fld(2, digest(b'sub'))
directory = fld(1, filenode) + fld(2, dirnode)
put('action_result_refs', 'directory', directory)
put('action_result_refs', 'tree', fld(1, directory) + fld(2, fld(1, filenode)))

b64 = lambda b: base64.b64encode(b).decode()
aid, body = b64(hashlib.sha256(b'action').digest()), b'hello body'
oid = b64(hashlib.sha256(body).digest())
get = '{"ID":1,"Command":"get","ActionID":"%s"}\n\n' % aid
putr = '{"ID":2,"Command":"put","ActionID":"%s","OutputID":"%s","BodySize":%d}\n\n"%s"\n\n' % (aid, oid, len(body), b64(body))
put0 = '{"ID":3,"Command":"put","ActionID":"%s","OutputID":"%s"}\n\n' % (aid, b64(hashlib.sha256(b'').digest()))
close = '{"ID":4,"Command":"close"}\n\n'
put('gocache_request', 'session', b'\x07' + (get + putr + put0 + close).encode())
put('gocache_request', 'session-bigbuf', b'\xff' + (get + putr + close).encode())
put('gocache_request', 'bad-body', b'\x03' + ('{"ID":2,"Command":"put","ActionID":"%s","OutputID":"%s","BodySize":4}\n\n"aGk"\n' % (aid, oid)).encode())
put('gocache_request', 'objectid', b'\x10' + ('{"ID":5,"Command":"put","ActionID":"%s","ObjectID":"%s","BodySize":0}\n' % (aid, oid)).encode())
