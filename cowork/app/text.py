"""Every string the app shows, in one place, ready for translation (no Qt).

Wrap new strings in :func:`tr`; formatters here turn service data into plain sentences and
are unit-tested without a screen.
"""

from __future__ import annotations

from collections.abc import Iterable

from cowork.app.service import (
    ChangeKind,
    CheckId,
    FileChange,
    FolderWarning,
    SessionState,
    WarningKind,
)


def tr(text: str) -> str:
    """The translation hook: every user-visible string passes through here."""
    return text


APP_NAME = tr("cowork")
WINDOW_TITLE = tr("cowork — hand a folder to an assistant, safely")

# first run
FIRST_RUN_TITLE = tr("Getting cowork ready")
FIRST_RUN_INTRO = tr(
    "cowork runs the assistant inside a sealed virtual machine on this computer. "
    "These checks make sure everything it needs is in place."
)
CHECK_TITLES = {
    CheckId.DAEMON: tr("cowork background service"),
    CheckId.LIBVIRT: tr("Virtual machine support (libvirt)"),
    CheckId.IMAGE: tr("Sealed system image"),
    CheckId.MODEL_KEY: tr("Key for the AI model"),
}
CHECK_FIX = {
    CheckId.DAEMON: tr("Start the service"),
    CheckId.LIBVIRT: tr("Show how to install"),
    CheckId.IMAGE: tr("Build the image"),
    CheckId.MODEL_KEY: tr("Enter a key…"),
}
LIBVIRT_HELP = tr(
    "cowork needs the virtual machine service libvirt. Run cowork's installer again "
    "(scripts/setup), or ask whoever manages this computer to install libvirt and QEMU; "
    "then press Check again."
)
CHECK_OK = tr("Ready")
CHECK_FAILED = tr("Needs attention")
RECHECK = tr("Check again")
CONTINUE = tr("Continue")
IMAGE_SIZE_NOTE = tr(
    "Building downloads about 150 MB of Debian packages and uses about 1 GB of disk space "
    "afterwards. Your folders are never touched."
)
KEY_TITLE = tr("Key for the AI model")
KEY_INTRO = tr(
    "Paste your Anthropic API key. It is stored in this computer's keychain and never shown "
    "again; the assistant's virtual machine never sees it."
)
KEY_FIELD = tr("API key")
KEY_SAVE = tr("Save key")
KEY_SAVED = tr("Key saved in your keychain.")
KEY_EMPTY = tr("Paste a key first.")
USE_DEMO = tr("Use the demo model instead")
DEMO_NOTE = tr(
    "The demo model is a scripted stand-in for trying cowork: it follows a fixed plan and "
    "is not an AI. Tasks run for real in the sealed machine."
)
DEMO_ON = tr("Using the demo model (not an AI).")
BUILD_STARTING = tr("Starting the build…")

# folders
PICK_TITLE = tr("Which folder should the assistant work in?")
PICK_INTRO = tr(
    "The assistant sees only this folder (and nothing else on your computer). "
    "Pick a working folder, not your whole home folder."
)
PICK_BUTTON = tr("Choose a folder…")
RECENT = tr("Recent folders")
NO_RECENT = tr("Folders you use will be listed here.")
USE_FOLDER = tr("Use this folder")
FOLDER_REFUSED = tr("This folder cannot be used")
FOLDER_OK = tr("This folder can be used")
FOLDER_VANISHED = tr(
    "The folder {path} is no longer there (it was moved, renamed or its drive was removed). "
    "Pick it again, or pick another folder."
)
SIZE_LINE = tr("{files} files, {size} in total")
SIZE_LINE_PARTIAL = tr("more than {files} files, at least {size}")
REAL_PATH = tr("Real location: {path}")
WARNING_TEXT = {
    WarningKind.SECRETS: tr(
        "This folder holds files that usually contain passwords or keys ({files}). The "
        "assistant could read them. Move them out first, or pick a smaller folder."
    ),
    WarningKind.LARGE: tr(
        "This folder is very large. The assistant works best in a folder with just the files "
        "for this task; consider making a working folder and copying them there."
    ),
    WarningKind.CLOUD: tr(
        "This folder is synced by a cloud service (Dropbox, OneDrive, iCloud…). Files that are "
        "only online may be downloaded or changed unexpectedly; a local copy is safer."
    ),
    WarningKind.NETWORK: tr(
        "This folder is on a network drive. It may be slow or disconnect during the task; a "
        "local copy is safer."
    ),
    WarningKind.BROAD: tr(
        "This is a whole {name} folder. Consider making a working folder with just the files "
        "for this task."
    ),
}

# trust
TRUST_TITLE = tr("This folder has its own settings")
TRUST_INTRO = tr(
    "The folder {path} contains settings that would change how the assistant works. "
    "Trust them only if you know where this folder came from. Anything they run, runs only "
    "inside the sealed machine."
)
TRUST_LAPSED = tr("These settings changed since you last trusted them. Look again:")
TRUST_YES = tr("Trust these settings")
TRUST_NO = tr("Don't trust")
TRUST_PROBLEMS = tr("Problems (these settings cannot be trusted until fixed):")
TRUST_KIND = {
    "hook": tr("Runs automatically"),
    "mcp-server": tr("Adds a tool"),
    "env": tr("Sets a variable"),
    "permissions": tr("Changes permissions"),
    "base-url": tr("Changes where the model is reached"),
    "command": tr("Runs a command"),
    "setting": tr("Setting"),
}

# task
TASK_TITLE = tr("What should the assistant do?")
TASK_PLACEHOLDER = tr("For example: summarise the invoices in this folder into one table")
TASK_START = tr("Start")
TASK_EMPTY = tr("Describe the task first.")
STOP = tr("Stop")
STOPPED_STAGED = tr(
    "Stopped. Nothing in your folder was changed: the assistant's changes are kept aside "
    "for you to review."
)
STOPPED_DIRECT = tr(
    "Stopped. Files the assistant already saved stay as they are; nothing else will change."
)
DETAILS = tr("Details")
ELAPSED = tr("Elapsed {time}")
LAST_ACTIVITY = tr("last activity {time} ago")
BOOTING = tr("Starting the sealed machine… {time}")
STATE_LABEL = {
    SessionState.STARTING: tr("Starting"),
    SessionState.WORKING: tr("Working"),
    SessionState.WAITING: tr("Waiting for you"),
    SessionState.STALLED: tr("No activity for a while — it may be stuck"),
    SessionState.FAILED: tr("Failed"),
    SessionState.FINISHED: tr("Finished"),
    SessionState.STOPPED: tr("Stopped"),
}
REFUSED_PREFIX = tr("Not allowed: {why}")
OUTCOME_DONE = tr("done")
OUTCOME_FAILED = tr("failed (exit code {code})")
OUTCOME_TIMED_OUT = tr("took too long and was stopped")
WEB_ALLOWED = tr("Web request to {host}")
WEB_DENIED = tr("Blocked a web request to {host}")
FINISHED_OK = tr("The assistant has finished.")
FINISHED_ERROR = tr("The task ended with a problem: {error}")

# approvals
APPROVAL_TITLE = tr("cowork needs your answer")
APPROVAL_WHY = tr("Why cowork asks: {why}")
APPROVAL_FOLDER = tr("In the folder {folder}")
ALLOW = tr("Allow")
DONT_ALLOW = tr("Don't allow")
APPROVAL_TIMEOUT = tr("If you do not answer within {time}, the answer is Don't allow.")
APPROVAL_QUEUE = tr("{n} more waiting")
NOTIFY_APPROVAL = tr("A task is waiting for your answer")
NOTIFY_FINISHED = tr("A task has finished")

# review
REVIEW_TITLE = tr("Review the changes")
REVIEW_NONE = tr("The assistant did not change any files.")
KEEP_SELECTED = tr("Keep selected")
DISCARD_ALL = tr("Discard all")
UNDO_LAST = tr("Undo last kept changes")
KEPT = tr("Kept {n} files.")
KEPT_ONE = tr("Kept 1 file.")
KEEP_FAILED = tr("Could not keep {path}: {why}")
DISCARDED = tr("All changes discarded; your folder is as it was.")
UNDONE = tr("Undone: {n} files are back as they were.")
UNDONE_ONE = tr("Undone: 1 file is back as it was.")
REVIEW_ALL_DONE = tr("Nothing left to review.")
UNDO_REFUSED = tr("Not put back: {path} — {why}")
NOTHING_TO_UNDO = tr("There are no kept changes of this task to undo.")
REVIEW_NOT_STARTED = tr(
    "This task has not started its sealed machine yet, so there is nothing to review."
)
REVIEW_DIRECT = tr(
    "This task saved its changes straight into your folder, as your settings ask, so there "
    "is nothing to review."
)
CONFLICT = tr(
    "You changed this file in your folder while the task ran. Keeping it would replace your "
    "version, so cowork leaves it alone."
)
CONFLICT_NOT_KEPT = tr("you changed it in your folder meanwhile, so your version stays")
CONFLICT_MARK = tr("you changed it too")
REPLACE_MINE = tr("Keep them anyway (replaces your versions)")
RENAMED_FROM = tr("renamed from {path}")
BEFORE = tr("Before")
AFTER = tr("After")
NOT_TEXT = tr("(not text: {size})")
ABSENT = tr("(no file)")
CHANGE_KIND = {
    ChangeKind.EDITED: tr("edited"),
    ChangeKind.ADDED: tr("added"),
    ChangeKind.DELETED: tr("deleted"),
}

# settings
SETTINGS_TITLE = tr("Settings")
SETTINGS_INTRO = tr(
    "The rules in force. Values set by your organisation are locked. Changes apply to new "
    "tasks only."
)
SETTING_COLUMNS = (tr("Setting"), tr("Value"), tr("Set by"))
LOCKED = tr("Set by your organisation")
LAYER = {
    "default": tr("cowork default"),
    "admin": tr("your organisation"),
    "user": tr("you"),
    "workspace": tr("the folder"),
    "floor": tr("built in (always)"),
}
EDIT_SETTING = tr("Change…")
TRUSTED_FOLDERS = tr("Folders whose own settings you trusted")
NO_TRUSTED = tr("You have not trusted any folder's settings.")
UNTRUST = tr("Stop trusting")
UNTRUSTED = tr("No longer trusted: {path}. Its settings are ignored from the next task.")
SAVE = tr("Save")

# service connection
DISCONNECTED = tr(
    "cowork's background service stopped. Reconnecting… Your folders and any changes waiting "
    "for review are safe."
)
RECONNECTED = tr("Connected again.")
NOT_CONNECTED = tr(
    "cowork's background service is not running, so no task can start. Use \u201cStart the "
    "service\u201d in Setup. Your folders are not affected."
)

# tray
TRAY_OPEN = tr("Open cowork")
TRAY_STOP_ALL = tr("Stop all tasks")
TRAY_QUIT = tr("Quit")
TRAY_IDLE = tr("cowork — nothing running")
TRAY_PENDING = tr("{n} waiting for your answer")
TRAY_NO_SESSIONS = tr("No tasks running")
NO_TRAY = tr("This desktop has no system tray; cowork stays in its window.")

# navigation
NAV_TASK = tr("Task")
NAV_FOLDER = tr("Folder")
NAV_SETTINGS = tr("Settings")
NAV_SETUP = tr("Setup")

# screen-reader names and other short texts
A11Y_TRUST_ITEMS = tr("What trusting would switch on")
A11Y_BUILD_PROGRESS = tr("Image build progress")
BUILD_FAILED = tr("The build failed: {why}")
A11Y_CHANGED_FILES = tr("Changed files; check the ones to keep")
A11Y_PREVIEW = tr("Before and after of the selected file")
A11Y_SETTINGS_TABLE = tr("Settings in force")
A11Y_COLUMN_HEADINGS = tr("Column headings")
A11Y_ROW_NUMBERS = tr("Row numbers")
A11Y_EDIT_SETTING = tr("Change the selected setting")
A11Y_UNTRUST = tr("Stop trusting the selected folder")
SETTING_SAVED = tr("Saved. Applies to new tasks.")
A11Y_BOOT = tr("Starting the sealed machine")
A11Y_DETAILS = tr("Show commands and details")
A11Y_TIMELINE = tr("What the assistant did")
FOLDER_LINE = tr("Folder: {path}")
PICK_FIRST = tr("Pick a folder first.")
A11Y_TASK_STATE = tr("Task state: {s}")
RULES_DO_NOT_ALLOW = tr("cowork's rules do not allow this.")
VM_READY = tr("The sealed machine is ready")
RAN_A_COMMAND = tr("Ran a command")
ASKED_YOU = tr("Asked you: {action}")
TRAY_RUNNING = tr("{n} running")
A11Y_SECTIONS = tr("cowork sections")


def duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return tr("{s} s").format(s=s)
    m, s = divmod(s, 60)
    if m < 60:
        return tr("{m} min {s} s").format(m=m, s=s) if s else tr("{m} min").format(m=m)
    h, m = divmod(m, 60)
    return tr("{h} h {m} min").format(h=h, m=m)


def kept(n: int) -> str:
    return KEPT_ONE if n == 1 else KEPT.format(n=n)


def undone(n: int) -> str:
    return UNDONE_ONE if n == 1 else UNDONE.format(n=n)


def size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def change_summary(files: Iterable[FileChange]) -> str:
    counts = {k: 0 for k in ChangeKind}
    for f in files:
        counts[f.kind] += 1
    parts = [f"{n} {CHANGE_KIND[k]}" for k, n in counts.items() if n]
    return ", ".join(parts) if parts else REVIEW_NONE


def warning_text(w: FolderWarning, folder_name: str = "") -> str:
    text = WARNING_TEXT[w.kind]
    shown = ", ".join(w.files[:3]) + (tr(" and others") if len(w.files) > 3 else "")
    return text.format(files=shown, name=folder_name)


def build_line(step: str, n: int, total: int, elapsed: float, remaining: float | None) -> str:
    if remaining is not None and remaining <= 0 and n >= total:
        return tr("Finished in {elapsed}").format(elapsed=duration(elapsed))
    left = tr("about {t} left").format(t=duration(remaining)) if remaining else ""
    line = tr("Step {n} of {total}: {step} — {elapsed} elapsed").format(
        n=n, total=total, step=step, elapsed=duration(elapsed)
    )
    return f"{line}, {left}" if left else line
