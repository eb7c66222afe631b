"""Storage behind two interfaces (store.base): the write port the runtime uses, and the
read port governance and the console use. Every SQL statement of the project lives here."""
