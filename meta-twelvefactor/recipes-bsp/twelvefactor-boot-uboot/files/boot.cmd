# twelvefactor A/B boot (U-Boot). The same contract as grub.cfg:
#   slot               A or B: the root file system to boot
#   upgrade_available  1 while a freshly installed slot has not confirmed itself
#   bootcount          boot attempts of that slot so far: U-Boot counts them
#                      (CONFIG_BOOTCOUNT_LIMIT, CONFIG_BOOTCOUNT_ENV: incremented
#                      and saved only while upgrade_available=1)
#   bootlimit          attempts before falling back (3): past it U-Boot runs
#                      altbootcmd instead of bootcmd, which switches the slot
#   rollback           the slot altbootcmd last fell back from (removed at the
#                      first attempt of the next new slot), so user space can
#                      report the failed attempt
# The environment is kept in two redundant copies on the ESP (uboot.env and
# uboot-redund.env, both written at image time by twelvefactor-uboot-env), which
# fw_setenv and SWUpdate reach through /etc/fw_env.config.

# U-Boot found neither copy and runs on its built-in environment: set up the
# A/B variables as the image writes them (uboot-ab.env).
if test "${tf_env}" != "1"; then
    setenv slot A
    setenv upgrade_available 0
    setenv bootcount 0
    setenv bootlimit 3
    setenv altbootcmd 'setenv rollback ${slot}; if test "${slot}" = "A"; then setenv slot B; else setenv slot A; fi; setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd'
    setenv tf_env 1
    saveenv
fi
# libubootenv (fw_setenv, SWUpdate) refuses to work while a copy is missing;
# a save writes the copy U-Boot did not load from.
for tf_file in uboot.env uboot-redund.env; do
    test -e ${devtype} ${devnum}:1 ${tf_file} || saveenv
done
# The first attempt of a newly installed slot: forget the last fallback.
if test "${upgrade_available}" = "1" && test "${bootcount}" = "1" && test -n "${rollback}"; then
    setenv rollback
    saveenv
fi
if test "${slot}" != "B"; then setenv slot A; fi

# Boot the slot.
if test "${slot}" = "B"; then setenv tf_root rootfs-b; else setenv tf_root rootfs-a; fi
part number ${devtype} ${devnum} ${tf_root} tf_part

# Kernel arguments. A Raspberry Pi's firmware passes its own in /chosen/bootargs
# (cmdline.txt; 8250.nr_uarts=1, without which the serial console has no
# ttyS0; the MAC address): keep them, and put ours last so that ours win.
setenv tf_fwargs
if test "${board}" = "rpi"; then
    setenv tf_console ttyS0,115200
    fdt addr ${fdt_addr} && fdt get value tf_fwargs /chosen bootargs
else
    setenv tf_console ttyAMA0,115200
fi
# systemd.gpt_auto=0: the layer mounts its partitions itself; on a boot that is not
# an EFI boot, systemd-gpt-auto-generator would add an automount of the ESP at
# /efi, which a read-only root does not have (the unit fails, the system is degraded).
setenv bootargs "root=PARTLABEL=${tf_root} ro rootwait twelvefactor.slot=${slot} console=${tf_console} panic=5 systemd.gpt_auto=0"
if test -n "${tf_fwargs}"; then setenv bootargs "${tf_fwargs} ${bootargs}"; fi

# Device tree: the slot's own (/boot/${fdtfile}, from the kernel the slot was
# built with), so that an update brings the kernel and its device tree
# together, with the overlays named in tf_dtoverlays applied from the slot's
# /boot/overlays. Without one (QEMU's U-Boot names no fdtfile) or when an
# overlay fails: the tree the firmware (the ESP's DTB) or QEMU passed.
setenv tf_fdt
if test -n "${fdtfile}" && test -n "${fdt_addr_r}" && load ${devtype} ${devnum}:${tf_part} ${fdt_addr_r} /boot/${fdtfile}; then
    setenv tf_fdt ${fdt_addr_r}
    fdt addr ${fdt_addr_r}
    fdt resize 65536
    for tf_overlay in ${tf_dtoverlays}; do
        if load ${devtype} ${devnum}:${tf_part} ${ramdisk_addr_r} /boot/overlays/${tf_overlay}.dtbo && fdt apply ${ramdisk_addr_r}; then
            echo "twelvefactor: overlay ${tf_overlay} applied"
        else
            echo "twelvefactor: overlay ${tf_overlay} failed, booting the device tree the firmware passed"
            setenv tf_fdt
        fi
    done
fi
if test -z "${tf_fdt}"; then
    if test -n "${fdt_addr}"; then setenv tf_fdt ${fdt_addr}; else setenv tf_fdt ${fdtcontroladdr}; fi
fi

# An initramfs in the slot goes with its kernel (grub.cfg does the same); the
# layer's image has none, a kernel built with its disk drivers as modules needs one.
if load ${devtype} ${devnum}:${tf_part} ${kernel_addr_r} /boot/Image; then
    if test -e ${devtype} ${devnum}:${tf_part} /boot/initrd; then
        load ${devtype} ${devnum}:${tf_part} ${ramdisk_addr_r} /boot/initrd && booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${tf_fdt}
    else
        booti ${kernel_addr_r} - ${tf_fdt}
    fi
fi
echo "twelvefactor: slot ${slot} did not boot"
if test "${upgrade_available}" = "1"; then reset; fi
