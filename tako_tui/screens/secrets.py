"""`tako secrets edit`: environments and their secret names; reveal, add, edit, delete, save.

Values are decrypted one at a time, only when revealed or edited, and live only in this process's
memory; saving writes ciphertext through the core (`SecretsStore.save`, atomic). A missing key is shown
with the core's own hint (how to import one), not as a failure of the screen.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tako_core.errors import SecretsError
from tako_core.secrets import SecretsStore, check_name

from ..widgets.look import ERROR, MUTED
from .confirm import ConfirmScreen

HIDDEN = "••••••••"


class SecretForm(ModalScreen[tuple[str, str] | None]):
    """Name and value of a secret. The value is typed hidden; ctrl+r shows it while typing."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+r", "toggle_value", "Show value"),
    ]

    def __init__(self, env: str, name: str = "") -> None:
        super().__init__()
        self._env = env
        self._name = name  # set: editing that secret's value; empty: adding one

    def compose(self) -> ComposeResult:
        with Vertical(id="form") as form:
            form.border_title = f"Edit {self._name}" if self._name else f"New secret in {self._env}"
            yield Label("Name")
            yield Input(self._name, placeholder="DATABASE_URL", id="name", disabled=bool(self._name))
            yield Label("Value  (ctrl+r shows it)")
            yield Input(placeholder="the value", password=True, id="value")
            yield Static("", id="form-error")
            with Horizontal(id="buttons"):
                yield Button("Set (enter)", id="set", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#value" if self._name else "#name", Input).focus()

    def action_toggle_value(self) -> None:
        value = self.query_one("#value", Input)
        value.password = not value.password

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def _cancelled(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#set")
    @on(Input.Submitted)
    def _submitted(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        value = self.query_one("#value", Input).value
        try:
            check_name(name)
        except SecretsError as err:
            self._error(err.render())
            self.query_one("#name", Input).focus()
            return
        if not value:
            self._error("the value is empty")
            self.query_one("#value", Input).focus()
            return
        self.dismiss((name, value))

    def _error(self, message: str) -> None:
        self.query_one("#form-error", Static).update(Text(message, ERROR))


class SecretsScreen(Screen[None]):
    AUTO_FOCUS = "#names"
    BINDINGS = [
        Binding("r", "reveal", "Reveal/hide"),
        Binding("a", "add", "Add"),
        Binding("e", "edit", "Edit"),
        Binding("d,delete", "delete", "Delete"),
        Binding("s,ctrl+s", "save", "Save"),
        Binding("q", "quit", "Quit"),
        Binding("left,right", "switch_pane", show=False),
    ]

    def __init__(self, store: SecretsStore, envs: list[str], env: str | None = None) -> None:
        super().__init__()
        self.store = store
        self.envs = envs
        self.env = env if env is not None else envs[0]
        self.revealed: dict[tuple[str, str], str] = {}  # decrypted on demand, memory only

    def compose(self) -> ComposeResult:
        yield Static(id="secrets-header")
        with Horizontal(id="secrets-body"):
            yield OptionList(*(Option(self._env_prompt(e), id=e) for e in self.envs), id="envs")
            with Vertical(id="secrets-main"):
                yield Static(id="env-status")
                yield DataTable(id="names", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        envs = self.query_one("#envs", OptionList)
        envs.border_title = "Environments"
        envs.highlighted = self.envs.index(self.env)
        table = self.query_one("#names", DataTable)
        table.add_column("Name", key="name")
        table.add_column("Value", key="value")
        self._show_env()

    # -- what tests read ---------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return self.store.names(self.env)

    @property
    def status(self) -> str:
        return str(self.query_one("#env-status", Static).render())

    @property
    def selected(self) -> str | None:
        table = self.query_one("#names", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    # -- rendering --------------------------------------------------------------------------------

    def _env_prompt(self, env: str) -> Text:
        count = len(self.store.names(env))
        return Text.assemble(env, (f"  {count}", MUTED))

    def _show_env(self, error: SecretsError | None = None) -> None:
        store, env = self.store, self.env
        header = Text.assemble(("tako ", "bold #f5a97f"), ("secrets ", "bold"), (f"{store.app}", "bold"))
        header.append(f"   {_shown_path(store.path)}", MUTED)
        if store.dirty:
            header.append("   ● unsaved changes (s to save)", "bold #f9e2af")
        self.query_one("#secrets-header", Static).update(header)
        key_id = store.key_id(env)
        status = Text.assemble((env, "bold #89b4fa"), "  ")
        status.append(f"key {key_id}" if key_id else "no key yet: the first secret creates one", MUTED)
        if error is not None:
            status.append(f"\n{error.render()}", ERROR)
        self.query_one("#env-status", Static).update(status)
        self.query_one("#envs", OptionList).replace_option_prompt(env, self._env_prompt(env))
        table = self.query_one("#names", DataTable)
        row = table.cursor_row
        table.clear()
        for name in store.names(env):
            value = self.revealed.get((env, name))
            shown = Text(_one_line(value)) if value is not None else Text(HIDDEN, MUTED)
            table.add_row(name, shown, key=name)
        table.border_title = f"Secrets · {env}"
        if table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))

    # -- actions --------------------------------------------------------------------------------------

    @on(OptionList.OptionHighlighted, "#envs")
    def _env_chosen(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is not None and event.option.id != self.env:
            self.env = event.option.id
            self._show_env()

    def action_switch_pane(self) -> None:
        names = self.query_one("#names", DataTable)
        (self.query_one("#envs", OptionList) if names.has_focus else names).focus()

    def action_reveal(self) -> None:
        name = self.selected
        if name is None:
            return
        key = (self.env, name)
        if key in self.revealed:
            del self.revealed[key]
        else:
            try:
                self.revealed[key] = self.store.get(self.env, name)
            except SecretsError as err:
                self._show_env(err)
                return
        self._show_env()

    def action_add(self) -> None:
        if self._unlocked():
            self.app.push_screen(SecretForm(self.env), self._set)

    def action_edit(self) -> None:
        name = self.selected
        if name is not None and self._unlocked():
            self.app.push_screen(SecretForm(self.env, name), self._set)

    def _unlocked(self) -> bool:
        """A missing key (or keyring) is reported before anyone types a value."""
        try:
            self.store.unlock(self.env)
        except SecretsError as err:
            self._show_env(err)
            return False
        return True

    def _set(self, result: tuple[str, str] | None) -> None:
        if result is None:
            return
        name, value = result
        had_key = self.store.key_id(self.env) is not None
        try:
            self.store.set(self.env, name, value)
        except SecretsError as err:
            self._show_env(err)
            return
        if (self.env, name) in self.revealed:
            self.revealed[(self.env, name)] = value
        if not had_key:
            self.notify(
                f"Created key {self.store.key_id(self.env)} for {self.env}; back it up with "
                f"`tako secrets key export --env {self.env}`",
                timeout=8,
            )
        self._show_env()
        self._select(name)

    def _select(self, name: str) -> None:
        table = self.query_one("#names", DataTable)
        table.move_cursor(row=table.get_row_index(name))

    def action_delete(self) -> None:
        name = self.selected
        if name is None:
            return
        env = self.env

        def answered(yes: bool | None) -> None:
            if yes:
                self.store.remove(env, name)
                self.revealed.pop((env, name), None)
                self._show_env()

        self.app.push_screen(
            ConfirmScreen(f"Remove {name} from {env}?", title="Delete", yes="Remove", no="Keep", danger=True),
            answered,
        )

    def action_save(self) -> None:
        if not self.store.dirty:
            self.notify("Nothing to save.", timeout=2)
            return
        try:
            self.store.save()
        except SecretsError as err:
            self._show_env(err)
            return
        self.notify(f"Saved {self.store.path.name} (encrypted).", timeout=3)
        self._show_env()

    def action_quit(self) -> None:
        if not self.store.dirty:
            self._leave()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._leave()

        self.app.push_screen(
            ConfirmScreen(
                "There are unsaved changes. Quit without saving them?",
                title="Unsaved changes",
                yes="Discard and quit",
                no="Keep editing",
                danger=True,
            ),
            answered,
        )

    def _leave(self) -> None:
        """Back to the screen below (in `tako console`), or out of `tako secrets edit`."""
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:
            self.app.exit()


def _shown_path(path: Path) -> str:
    """Relative to the working directory when it is below it (the usual case: run from the project)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _one_line(value: str) -> str:
    first, *rest = value.splitlines() or [""]
    return f"{first} …(+{len(rest)} lines)" if rest else first
