# twelvefactor A/B boot (U-Boot). The same contract as grub.cfg:
#   slot (A|B), upgrade_available (0|1), bootcount, bootlimit (default 3).
# U-Boot itself counts attempts (CONFIG_BOOTCOUNT_LIMIT, CONFIG_BOOTCOUNT_ENV:
# bootcount is incremented and saved only while upgrade_available=1) and runs
# altbootcmd once bootcount exceeds bootlimit; altbootcmd switches the slot.
# The environment is kept in two redundant copies on the ESP (uboot.env and
# uboot-redund.env), which fw_setenv/SWUpdate reach through /etc/fw_env.config.

if test "${tf_env}" != "1"; then
    setenv slot A
    setenv upgrade_available 0
    setenv bootcount 0
    setenv bootlimit 3
    setenv altbootcmd 'if test "${slot}" = "A"; then setenv slot B; else setenv slot A; fi; setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd'
    setenv tf_env 1
    saveenv
fi
if test "${slot}" != "B"; then setenv slot A; fi

if test "${slot}" = "B"; then setenv tf_root rootfs-b; else setenv tf_root rootfs-a; fi
part number ${devtype} ${devnum} ${tf_root} tf_part
if test "${board}" = "rpi"; then setenv tf_console ttyS0,115200; else setenv tf_console ttyAMA0,115200; fi

setenv bootargs "root=PARTLABEL=${tf_root} ro rootwait twelvefactor.slot=${slot} console=${tf_console} panic=5"
if load ${devtype} ${devnum}:${tf_part} ${kernel_addr_r} /boot/Image; then
    booti ${kernel_addr_r} - ${fdtcontroladdr}
fi
echo "twelvefactor: slot ${slot} did not boot"
if test "${upgrade_available}" = "1"; then reset; fi
