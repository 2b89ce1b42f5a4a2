# twelvefactor_delta: what the delta update recipe (twelvefactor-update-delta)
# adds to meta-swupdate's swupdate class.
#
# A delta .swu carries the zchunk header of the root file system; the .zck
# itself stays on the management service's artifact server, named by its
# sha256, and the device's SWUpdate fetches the chunks it lacks from there.
# meta-swupdate's swupdate_exec_functions() evaluates `$name(parms)` on a
# sw-description line as name(d, s, "parms"), s being the folder the archive
# is made in: twelvefactor_deploy_sha256 gives the template the digest of a
# file that is not in the archive but in DEPLOY_DIR_IMAGE.
#
# twelvefactor_zck_size gives the size of the file system a zchunk header (in
# the archive) indexes: the delta handler's `source-size`, so that SWUpdate
# indexes that much of the running slot rather than its whole partition (the
# running file system is the previous release's; a different size costs only
# chunks found or not). The header's layout is zchunk_format.txt's; the
# artifact tool reads it the same way (twelvefactor_services.artifact.zchunk).
#
# twelvefactor_deploy_zck (a postfunc of do_swuimage) copies that .zck next
# to the .swu, as ${IMAGE_NAME}.zck with the ${IMAGE_LINK_NAME}.zck link,
# after checking that the copy is the file the signed sw-description names:
# the image's own .zck is replaced by the next image build, the pair in the
# deploy folder is what the operator uploads.

def twelvefactor_file_sha256(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()

def twelvefactor_deploy_sha256(d, s, filename):
    import os

    path = os.path.join(d.getVar('DEPLOY_DIR_IMAGE'), filename)
    if not os.path.isfile(path):
        bb.fatal("twelvefactor_deploy_sha256: %s is not in DEPLOY_DIR_IMAGE (%s)" % (filename, path))
    return twelvefactor_file_sha256(path)

def twelvefactor_zck_size(d, s, filename):
    import os

    with open(os.path.join(s, filename), 'rb') as f:
        header = f.read()
    at = 0

    def integer():
        # a compressed integer: 7 bits a byte, low first, the high bit set on the last
        nonlocal at
        value = shift = 0
        while at < len(header) and shift <= 63:
            byte = header[at]
            at += 1
            value |= (byte & 0x7f) << shift
            shift += 7
            if byte & 0x80:
                return value
        bb.fatal("twelvefactor_zck_size: %s is cut short" % filename)

    if not header.startswith(b'\x00ZCK1'):
        bb.fatal("twelvefactor_zck_size: %s is not a zchunk header" % filename)
    at = 5
    if integer() != 1:
        bb.fatal("twelvefactor_zck_size: %s's header digest is not SHA-256" % filename)
    integer()  # header size
    at += 32 + 32  # the header's digest, the data's
    flags = integer()
    if flags & 1:
        bb.fatal("twelvefactor_zck_size: %s has data streams" % filename)
    integer()  # compression type
    if flags & 2:  # optional elements: id, size, data
        for _ in range(integer()):
            integer()
            at += integer()
    integer()  # index size
    lengths = {0: 20, 1: 32, 2: 64, 3: 16}  # SHA-1, SHA-256, SHA-512, SHA-512/128
    hash_type = integer()
    if hash_type not in lengths:
        bb.fatal("twelvefactor_zck_size: %s has chunk hash type %d, not one zchunk defines" % (filename, hash_type))
    digest = lengths[hash_type] * (2 if flags & 4 else 1)
    total = 0
    for number in range(integer()):
        at += digest
        integer()  # compressed length
        size = integer()
        if number:  # the first entry is the compression dictionary, not data
            total += size
    return str(total)

python twelvefactor_deploy_zck() {
    import os
    import shutil

    name = d.getVar('TWELVEFACTOR_ROOTFS_ZCK')
    deploydir = d.getVar('SWUDEPLOYDIR')
    target = d.getVar('IMAGE_NAME') + '.zck'
    shutil.copyfile(os.path.join(d.getVar('DEPLOY_DIR_IMAGE'), name), os.path.join(deploydir, target))
    digest = twelvefactor_file_sha256(os.path.join(deploydir, target))
    with open(os.path.join(d.getVar('WORKDIR'), 'sw-description')) as f:
        if '/%s.zck"' % digest not in f.read():
            bb.fatal("%s changed while the .swu was made: its sha256 %s is not the one sw-description names" % (name, digest))
    link = d.getVar('IMAGE_LINK_NAME')
    if link and link + '.zck' != target:
        os.symlink(target, os.path.join(deploydir, link + '.zck'))
}
twelvefactor_deploy_zck[doc] = "Copies the root file system's .zck, which the delta .swu names by its sha256, next to the .swu"
do_swuimage[postfuncs] += "twelvefactor_deploy_zck"
