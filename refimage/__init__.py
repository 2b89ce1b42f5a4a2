"""Reference device image: Debian 13 packages plus the layer's device files.

A Yocto build cannot run on the test machines, so this builder assembles a
bootable x86-64 GPT disk from Debian trixie packages (mmdebstrap) and installs
the same device files the meta-twelvefactor recipes install, at the same paths.
Nothing is loop-mounted: file systems are made from directories
(`mkfs.ext4 -d`, mtools) and copied into the disk file with `dd`.
"""
